#!/bin/sh
# /init of the Segue test guest (PID 1, busybox sh).
#
# Mounts the kernel file systems, loads the modules listed in /lib/modules/load-order (already in
# dependency order; virtio_blk makes a segue.disk such as /dev/vda appear), configures eth0 from
# segue.ip=ADDR/PREFIX and segue.gw=GW on the kernel command line, starts busybox acpid so that
# an ACPI power-button press (QEMU system_powerdown) powers the guest off, then runs
# /bin/segue-check forever, restarting it (loudly) if it dies.
# Lines starting with SEGUE-INIT on the console come from this script.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin

log() {
    echo "SEGUE-INIT $*" > /dev/console
}

# The value of the last KEY=VALUE on the kernel command line (the kernel's own rule).
cmdline_value() {
    value=""
    for token in $(cat /proc/cmdline); do
        case "$token" in
            "$1"=*) value="${token#*=}" ;;
        esac
    done
    echo "$value"
}

mount_filesystems() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /run /tmp /var/log /var/run
    mount -t devpts devpts /dev/pts
}

load_modules() {
    while read -r module; do
        insmod "/lib/modules/$module" || log "FAILED to load module $module"
    done < /lib/modules/load-order
}

# Waits up to about 3 s for a network interface (virtio_net probes asynchronously at times).
wait_for_interface() {
    tries=0
    while [ ! -e "/sys/class/net/$1" ] && [ "$tries" -lt 30 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    [ -e "/sys/class/net/$1" ]
}

configure_network() {
    ip link set lo up
    address=$(cmdline_value segue.ip)
    gateway=$(cmdline_value segue.gw)
    if [ -z "$address" ]; then
        log "no segue.ip on the kernel command line: eth0 left down"
        return
    fi
    if ! wait_for_interface eth0; then
        log "FAILED: no eth0 (is there a virtio-net-pci device?)"
        return
    fi
    ip link set eth0 up || log "FAILED to bring eth0 up"
    ip addr add "$address" dev eth0 || log "FAILED to set address $address"
    if [ -n "$gateway" ]; then
        ip route add default via "$gateway" || log "FAILED to add default route via $gateway"
    fi
}

# busybox acpid maps the power button (KEY_POWER on the button driver's evdev) to the action
# /etc/acpi/PWRF/00000080. PID 1 here is this script, not busybox init, so the action powers off
# with reboot(2) directly (poweroff -f); no filesystem is mounted from a disk (the checker's
# journal disk, if any, is written O_DIRECT|O_SYNC), so sync is only for good measure.
start_acpid() {
    mkdir -p /etc/acpi/PWRF
    cat > /etc/acpi/PWRF/00000080 <<'EOF'
#!/bin/sh
echo "SEGUE-INIT power button pressed: powering off" > /dev/console
sync
poweroff -f
EOF
    chmod 755 /etc/acpi/PWRF/00000080
    if ! ls /dev/input/event* > /dev/null 2>&1; then
        log "FAILED: no input event device, the power button will not work"
    fi
    acpid -c /etc/acpi -l /var/log/acpid.log || log "FAILED to start acpid"
}

supervise_checker() {
    restarts=0
    while true; do
        /bin/segue-check
        status=$?
        restarts=$((restarts + 1))
        log "SEGUE-CHECK DIED status=$status restarts=$restarts: restarting in 1 s"
        sleep 1
    done
}

mount_filesystems
load_modules
configure_network
start_acpid
log "up in $(cut -d' ' -f1 /proc/uptime) s"
supervise_checker
