"""Write a file so that a reader sees the old version or the new one, never a part of either."""
import contextlib
import glob
import os
import tempfile


_TEMP_SUFFIX = ".tmp"


def _temp_prefix(path):
    return f".{os.path.basename(path)}."


def remove_stale_temp_files(path):
    """Remove the temporary files atomic_write(path) left behind when its process was killed mid-write
    (a checkpoint's are as large as it); returns their paths. Call it only where no other process can be
    writing path (a training run: rank 0 of one run writes its checkpoint)."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(glob.escape(directory), glob.escape(_temp_prefix(path)) + "*" + _TEMP_SUFFIX)
    stale = sorted(glob.glob(pattern))
    for f in stale:
        os.remove(f)
    return stale


@contextlib.contextmanager
def atomic_write(path):
    """Yield a binary file in path's directory. On a clean exit it is flushed, fsynced and renamed over
    path (then the directory is fsynced, so the rename survives a crash too); on any error it is
    removed and path is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
