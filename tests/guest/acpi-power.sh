#!/bin/sh
# ACPI power button (QMP system_powerdown): busybox acpid runs this as
# /etc/acpi/PWRF/00000080. Flush the disk, say so, power off.
sync
mount -o remount,ro /mnt/root 2>/dev/null
sync
# a leading newline: the console shell's prompt may already be on the line
printf '\nKUMO-POWEROFF\n' >/dev/console
poweroff -f
