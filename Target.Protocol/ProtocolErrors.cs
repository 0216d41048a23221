// One place that turns an exception from the engine into a protocol-neutral error kind. Each
// protocol maps the kind to its own code (NBD errno here; SCSI sense in the SCSI layer).
// Unexpected exceptions become Unexpected: the caller logs them and answers EIO / MEDIUM ERROR.
using Target.Dedup;

namespace Target.Protocol;

public enum StorageErrorKind
{
    NoSpace,
    ReadOnly,
    OutOfRange,
    NotOwner,
    Media,
    FastZeroUnsupported,
    NotFound,
    AlreadyExists,
    Cancelled,
    Unexpected,
}

public static class ProtocolErrors
{
    public static StorageErrorKind Classify(Exception exception) => exception switch
    {
        NoSpaceException => StorageErrorKind.NoSpace,
        ReadOnlyVolumeException => StorageErrorKind.ReadOnly,
        Target.Dedup.OutOfRangeException => StorageErrorKind.OutOfRange,
        NotOwnerException => StorageErrorKind.NotOwner,
        MediaErrorException => StorageErrorKind.Media,
        FastZeroUnsupportedException => StorageErrorKind.FastZeroUnsupported,
        NotFoundException => StorageErrorKind.NotFound,
        AlreadyExistsException => StorageErrorKind.AlreadyExists,
        OperationCanceledException => StorageErrorKind.Cancelled,
        _ => StorageErrorKind.Unexpected,
    };

    /// <summary>NBD error value (proto.md "Error values") for an error kind.</summary>
    public static uint ToNbdError(StorageErrorKind kind) => kind switch
    {
        StorageErrorKind.NoSpace => Nbd.NbdError.NoSpace,
        StorageErrorKind.ReadOnly => Nbd.NbdError.Perm,
        StorageErrorKind.OutOfRange => Nbd.NbdError.Invalid,
        StorageErrorKind.NotOwner => Nbd.NbdError.Shutdown,
        StorageErrorKind.Cancelled => Nbd.NbdError.Shutdown,
        StorageErrorKind.FastZeroUnsupported => Nbd.NbdError.NotSupported,
        StorageErrorKind.NotFound => Nbd.NbdError.IO,
        _ => Nbd.NbdError.IO,
    };
}
