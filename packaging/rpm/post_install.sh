# bsk-sidecar %post ($1: 1 on install, 2 or more on upgrade): the system user,
# /etc/bsk-sidecar and /var/lib/bsk-sidecar. Never enables or starts the service.
getent group bsk-sidecar >/dev/null || groupadd --system bsk-sidecar
getent passwd bsk-sidecar >/dev/null ||
    useradd --system --gid bsk-sidecar --no-create-home \
        --home-dir /var/lib/bsk-sidecar --shell /sbin/nologin \
        --comment "bsk-sidecar security sidecar" bsk-sidecar
install -d -m 0750 -o root -g bsk-sidecar /etc/bsk-sidecar
install -d -m 0700 -o root -g root /etc/bsk-sidecar/credentials
install -d -m 0700 -o bsk-sidecar -g bsk-sidecar /var/lib/bsk-sidecar
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 2 ]; then
        systemctl try-restart bsk-sidecar.service || :
    fi
fi
if [ ! -e /etc/bsk-sidecar/bsk-sidecar.yaml ]; then
    echo "bsk-sidecar: not started. Write /etc/bsk-sidecar/bsk-sidecar.yaml (examples in"
    echo "  /etc/bsk-sidecar/examples), run 'bsk-sidecar check --config /etc/bsk-sidecar/bsk-sidecar.yaml',"
    echo "  then 'systemctl enable --now bsk-sidecar'."
fi
exit 0
