#!/bin/sh
# Install the Debian packages Segue needs, only those missing; needs root.
set -eu
PACKAGES="qemu-system-x86 qemu-utils busybox-static cpio gcc libc6-dev iproute2 python3-venv python3-dev"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: missing packages:$missing; run as root (make setup needs root for apt and namespaces)" >&2
    exit 1
fi
echo "installing:$missing"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
