# bsk-sidecar %postun: erase keeps /etc/bsk-sidecar and /var/lib/bsk-sidecar (RPM has no
# purge; delete them by hand to forget the config and state).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
exit 0
