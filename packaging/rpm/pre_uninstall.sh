# bsk-sidecar %preun ($1: 0 on erase, 1 on upgrade): on erase stop and disable the service.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop bsk-sidecar.service || :
    fi
    systemctl --no-reload disable bsk-sidecar.service >/dev/null 2>&1 || :
fi
exit 0
