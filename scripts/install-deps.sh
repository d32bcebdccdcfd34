#!/bin/sh
# Install the Debian packages Segue needs, only those missing; needs root.
#
# QEMU must be 8.0 or newer: QEMU 7.2 (Debian 12's own) under TCG loses pages a guest dirties
# during a multi-pass pre-copy (README, "Known limits"). On Debian 12 QEMU comes from
# bookworm-backports (10.0); the backports suite is added to apt's sources if missing. Its
# packages have apt priority 100: nothing else is upgraded from it.
set -eu
PACKAGES="busybox-static cpio gcc libc6-dev iproute2 python3-venv python3-dev"
QEMU_PACKAGES="qemu-system-x86 qemu-utils"
QEMU_MIN_MAJOR=8
BACKPORTS_LIST=/etc/apt/sources.list.d/segue-bookworm-backports.sources

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

qemu_major() {  # "1:10.0.2+ds-2..." -> 10; 0 when not installed
    installed qemu-system-x86 || { echo 0; return; }
    dpkg-query -W -f='${Version}' qemu-system-x86 | sed -e 's/^[0-9]*://' -e 's/[^0-9].*//'
}

missing=""
for pkg in $PACKAGES; do
    installed "$pkg" || missing="$missing $pkg"
done
qemu_ok=1
[ "$(qemu_major)" -ge "$QEMU_MIN_MAJOR" ] && installed qemu-utils || qemu_ok=0
if [ -z "$missing" ] && [ "$qemu_ok" = 1 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: missing packages:$missing (QEMU >= $QEMU_MIN_MAJOR: $([ $qemu_ok = 1 ] && echo ok || echo no));" \
         "run as root (make setup needs root for apt and namespaces)" >&2
    exit 1
fi
. /etc/os-release
target=""
if [ "$qemu_ok" = 0 ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "adding bookworm-backports to apt's sources (for QEMU >= $QEMU_MIN_MAJOR)"
        cat > "$BACKPORTS_LIST" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    target="-t bookworm-backports"
fi
echo "installing:$missing$([ $qemu_ok = 0 ] && echo " $QEMU_PACKAGES")"
apt-get update -q
if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
if [ "$qemu_ok" = 0 ]; then
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $target $QEMU_PACKAGES
    major=$(qemu_major)
    if [ "$major" -lt "$QEMU_MIN_MAJOR" ]; then
        echo "error: QEMU $major installed; Segue needs $QEMU_MIN_MAJOR or newer" \
             "(on Debian 12: bookworm-backports)" >&2
        exit 1
    fi
fi
