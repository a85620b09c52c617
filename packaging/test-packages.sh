#!/usr/bin/env bash
# Checks the packages packaging/build.sh left in target/packages/, as root on a Debian
# machine: the binary's glibc floor (objdump -T), the .deb installed, checked, upgraded,
# removed and purged for real (dpkg), and the .rpm's contents and scripts (rpm -qp).
# Every missing tool is a failure. Ends with "N passed, N failed".
# It purges an installed bsk-sidecar first: run it on a CI or throwaway machine only.
set -uo pipefail
cd "$(dirname "$0")/.."

MAX_GLIBC=2.17
passed=0
failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if out=$("$@" 2>&1); then ok "$what"; else fail "$what"; echo "$out" | sed 's/^/     /'; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

for tool in objdump dpkg dpkg-deb rpm systemd-analyze; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is installed (packaging/ci-check.sh installs it)"
done
[ "$(id -u)" = 0 ] || fail "running as root (dpkg -i needs it)"
[ "$failed" -eq 0 ] || finish

shopt -s nullglob
debs=(target/packages/*.deb)
rpms=(target/packages/*.rpm)
[ "${#debs[@]}" -ge 1 ] || fail "a .deb in target/packages (run packaging/build.sh)"
[ "${#rpms[@]}" -ge 1 ] || fail "an .rpm in target/packages (run packaging/build.sh)"
[ "$failed" -eq 0 ] || finish

# Highest GLIBC_x.y symbol version a binary asks for.
glibc_floor() {
    objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1
}
glibc_at_most() { # glibc_at_most BINARY
    local v
    v=$(glibc_floor "$1")
    [ -n "$v" ] || { echo "no GLIBC_ symbols in $1"; return 1; }
    echo "$1 needs glibc $v"
    [ "$(printf '%s\n%s\n' "$v" "$MAX_GLIBC" | sort -V | tail -n1)" = "$MAX_GLIBC" ]
}

echo "== glibc floor"
for deb in "${debs[@]}"; do
    x=$(mktemp -d)
    dpkg-deb -x "$deb" "$x"
    check "$(basename "$deb"): binary needs glibc <= $MAX_GLIBC ($(glibc_floor "$x/usr/bin/bsk-sidecar"))" \
        glibc_at_most "$x/usr/bin/bsk-sidecar"
    rm -rf "$x"
done

deb=$(ls target/packages/*_amd64.deb 2>/dev/null | head -n1)
rpm_pkg=$(ls target/packages/*.x86_64.rpm 2>/dev/null | head -n1)

echo "== .deb contents"
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/bsk-sidecar ./usr/lib/systemd/system/bsk-sidecar.service \
    ./etc/bsk-sidecar/examples/department.yaml ./etc/bsk-sidecar/examples/portal.yaml \
    ./etc/bsk-sidecar/examples/local.yaml ./usr/share/man/man1/bsk-sidecar.1.gz \
    ./usr/share/man/man1/bsk-sidecar-check.1.gz \
    ./usr/share/bash-completion/completions/bsk-sidecar \
    ./usr/share/zsh/vendor-completions/_bsk-sidecar \
    ./usr/share/fish/vendor_completions.d/bsk-sidecar.fish \
    ./usr/share/bsk-sidecar/prometheus/bsk-sidecar.rules.yml \
    ./usr/share/bsk-sidecar/grafana/bsk-sidecar.json; do
    # cargo-deb writes the names without the leading "./".
    check "deb holds $path" grep -qE "[ ](\./)?${path#./}$" <<<"$contents"
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
check "deb marks the examples as conffiles" \
    grep -qx /etc/bsk-sidecar/examples/department.yaml <<<"$conffiles"

echo "== dpkg -i"
# A leftover from an earlier run would hide what this install does.
dpkg -P bsk-sidecar >/dev/null 2>&1 || true
rm -rf /etc/bsk-sidecar /var/lib/bsk-sidecar
check "dpkg -i installs and says the service waits for a config" \
    bash -c 'dpkg -i "$1" | grep -q "bsk-sidecar: not started"' _ "$deb"
check "the system user exists" getent passwd bsk-sidecar
check "/var/lib/bsk-sidecar is 0700 bsk-sidecar" \
    test "$(stat -c '%a %U' /var/lib/bsk-sidecar)" = "700 bsk-sidecar"
check "/etc/bsk-sidecar is 0750 root:bsk-sidecar" \
    test "$(stat -c '%a %U:%G' /etc/bsk-sidecar)" = "750 root:bsk-sidecar"
check "/etc/bsk-sidecar/credentials is 0700 root" \
    test "$(stat -c '%a %U' /etc/bsk-sidecar/credentials)" = "700 root"
check "the service is not enabled by the install" \
    test ! -e /etc/systemd/system/multi-user.target.wants/bsk-sidecar.service
check "bsk-sidecar --version runs" /usr/bin/bsk-sidecar --version
check "bsk-sidecar check passes on the installed local example" \
    /usr/bin/bsk-sidecar check --config /etc/bsk-sidecar/examples/local.yaml
creds=$(mktemp -d)
printf %s 376423 >"$creds/bsk_passcode"
printf %s department-jwt-secret-0123456789 >"$creds/bsk_jwt"
printf %s IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W >"$creds/bsk_aes_key"
printf %s V0ZMZO6WZ45KY2PL >"$creds/bsk_aes_iv"
printf %s department-admin-token >"$creds/admin_token"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
    -keyout /etc/bsk-sidecar/tls.key -out /etc/bsk-sidecar/tls.crt >/dev/null 2>&1
check "bsk-sidecar check passes on the installed department example with its credentials" \
    env CREDENTIALS_DIRECTORY="$creds" /usr/bin/bsk-sidecar check --config /etc/bsk-sidecar/examples/department.yaml
rm -rf "$creds"
check "systemd-analyze verify accepts the installed unit" \
    bash -c 'out=$(systemd-analyze verify /usr/lib/systemd/system/bsk-sidecar.service 2>&1); echo "$out"; [ -z "$out" ]'
check "the man page is installed" test -s /usr/share/man/man1/bsk-sidecar.1.gz
check "the man page names the check subcommand" \
    bash -c 'zcat /usr/share/man/man1/bsk-sidecar.1.gz | grep -q "bsk\\\\-sidecar\\\\-check(1)"'

echo "== upgrade keeps the operator's files"
printf '# edited by the operator\n' >>/etc/bsk-sidecar/examples/local.yaml
cp /etc/bsk-sidecar/examples/local.yaml /etc/bsk-sidecar/bsk-sidecar.yaml
echo state >/var/lib/bsk-sidecar/outbox.test
check "dpkg -i again (upgrade in place)" dpkg -i --force-confold "$deb"
check "an edited example conffile is kept" grep -q 'edited by the operator' /etc/bsk-sidecar/examples/local.yaml
check "the operator's config is kept" test -s /etc/bsk-sidecar/bsk-sidecar.yaml

echo "== dpkg -r keeps config and state"
check "dpkg -r removes" dpkg -r bsk-sidecar
check "the binary is gone" test ! -e /usr/bin/bsk-sidecar
check "the unit is gone" test ! -e /usr/lib/systemd/system/bsk-sidecar.service
check "the operator's config stays" test -s /etc/bsk-sidecar/bsk-sidecar.yaml
check "the example conffiles stay" test -s /etc/bsk-sidecar/examples/department.yaml
check "the state directory stays" test -s /var/lib/bsk-sidecar/outbox.test

echo "== dpkg -P deletes them"
check "dpkg -P purges" dpkg -P bsk-sidecar
check "/etc/bsk-sidecar is gone" test ! -e /etc/bsk-sidecar
check "/var/lib/bsk-sidecar is gone" test ! -e /var/lib/bsk-sidecar
check "dpkg forgets the package" bash -c '! dpkg -s bsk-sidecar >/dev/null 2>&1'

echo "== .rpm"
list=$(rpm -qlp "$rpm_pkg" 2>/dev/null)
for path in /usr/bin/bsk-sidecar /usr/lib/systemd/system/bsk-sidecar.service \
    /etc/bsk-sidecar/examples/department.yaml /usr/share/man/man1/bsk-sidecar.1.gz \
    /usr/share/bash-completion/completions/bsk-sidecar \
    /usr/share/bsk-sidecar/prometheus/bsk-sidecar.rules.yml \
    /usr/share/bsk-sidecar/grafana/bsk-sidecar.json; do
    check "rpm holds $path" grep -qx "$path" <<<"$list"
done
flags=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_pkg" 2>/dev/null)
check "rpm marks the examples %config(noreplace)" \
    grep -qE '^c[a-z]*n[a-z]* /etc/bsk-sidecar/examples/department.yaml$' <<<"$flags"
scripts=$(rpm -qp --scripts "$rpm_pkg" 2>/dev/null)
check "rpm %post creates the user" grep -q 'useradd --system' <<<"$scripts"
# (The message telling the operator what to run is an `echo`, not a command.)
check "rpm %post never enables or starts the service" \
    bash -c '! grep -v "^ *echo" <<<"$1" | grep -E "systemctl (enable|start)"' _ "$scripts"
check "rpm %preun stops and disables on erase" grep -q 'disable bsk-sidecar.service' <<<"$scripts"
check "rpm requires glibc >= 2.17" \
    bash -c 'rpm -qp --requires "$1" 2>/dev/null | grep -qx "glibc >= 2.17"' _ "$rpm_pkg"
x=$(mktemp -d)
(cd "$x" && rpm2cpio "$OLDPWD/$rpm_pkg" | cpio -idm --quiet 2>/dev/null)
check "rpm binary needs glibc <= $MAX_GLIBC" glibc_at_most "$x/usr/bin/bsk-sidecar"
rm -rf "$x"

finish
