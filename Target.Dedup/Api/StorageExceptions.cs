// Typed errors that cross the engine/protocol boundary. Each protocol maps them to its own
// codes (NBD errno, SCSI sense); a protocol never shows a stack trace to a host.
namespace Target.Dedup;

public abstract class StorageException : Exception
{
    protected StorageException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>The pool has no free space for new data. NBD: ENOSPC; SCSI: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT.</summary>
public sealed class NoSpaceException(string message) : StorageException(message);

/// <summary>The volume is read-only. NBD: EPERM; SCSI: DATA PROTECT / WRITE PROTECTED.</summary>
public sealed class ReadOnlyVolumeException(string message) : StorageException(message);

/// <summary>The request lies outside the volume. NBD: EINVAL; SCSI: ILLEGAL REQUEST / LBA OUT OF RANGE.</summary>
public sealed class OutOfRangeException(string message) : StorageException(message);

/// <summary>This controller does not own the volume, or it is quiesced. NBD: ESHUTDOWN; SCSI: NOT READY / ALUA transition.</summary>
public sealed class NotOwnerException(string message) : StorageException(message);

/// <summary>The device failed or returned data that failed its checksum. NBD: EIO; SCSI: MEDIUM ERROR / UNRECOVERED READ ERROR.</summary>
public sealed class MediaErrorException(string message, Exception? inner = null) : StorageException(message, inner);

/// <summary>The caller asked for a fast zero that the engine cannot do fast. NBD: ENOTSUP.</summary>
public sealed class FastZeroUnsupportedException(string message) : StorageException(message);

/// <summary>No such volume or pool object.</summary>
public sealed class NotFoundException(string message) : StorageException(message);

/// <summary>A name or object already exists.</summary>
public sealed class AlreadyExistsException(string message) : StorageException(message);
