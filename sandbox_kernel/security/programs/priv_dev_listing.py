import re
import stat

from ._prelude import _os, _report  # inlined

FORBIDDEN = re.compile(
    r"^((sd|hd|vd|xvd|nvme|mmcblk|loop|dm-|md|sr|sg|nbd|ram|zram|nst?|st)[0-9]"
    r"|kvm|mem|kmem|port|kmsg|disk|mapper|vhost-.*|vsock|vfio|dri|nvidia.*|watchdog.*"
    r"|msr|cpu|hpet|rtc[0-9]*|uinput|input|snd|fb[0-9]+|tpm.*|sev.*|sgx.*|mcelog"
    r"|loop-control|btrfs-control|userfaultfd|console|tty[0-9]+|ttyS[0-9]+)$"
)
bad = []
for dirpath, dirnames, filenames in _os.walk("/dev"):
    for name in dirnames + filenames:
        path = _os.path.join(dirpath, name)
        try:
            mode = _os.lstat(path).st_mode
        except OSError:
            continue
        if FORBIDDEN.match(name) or stat.S_ISBLK(mode):
            bad.append(path)
listing = sorted(_os.listdir("/dev"))
_report(not bad, ("hardware nodes: %s" % bad) if bad else "/dev: %s" % listing)
