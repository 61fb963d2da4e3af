from ._prelude import _err, _read, _report  # inlined

NEEDS = {}  # filled by render()

HOST_VALUES = {
    "boot_id": NEEDS["host_boot_id"],
    "machine_id": NEEDS["host_machine_id"],
    "cmdline": NEEDS["host_cmdline"],
}
seen = {}
for p in (
    "/proc/sys/kernel/random/boot_id",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/proc/cmdline",
):
    try:
        seen[p] = _read(p).strip()
    except OSError as e:
        seen[p] = "(%s)" % _err(e)
leaks = [
    "%s = host %s" % (p, k)
    for p, v in seen.items()
    for k, hv in HOST_VALUES.items()
    if hv and v == hv
]
_report(not leaks, leaks or seen)
