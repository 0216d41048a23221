// One in-flight request, pooled per connection so that steady-state traffic allocates nothing:
// the object, its small reply buffer and its continuation delegates are made once and reused;
// payload and large reply buffers are rented from ArrayPool and returned when the reply is sent.
// Invariant: after the operation hands itself to the connection's reply queue it is owned by the
// sender; nothing else touches it until it is rented again.
using System.Buffers;
using System.Runtime.CompilerServices;
using Target.Dedup;

namespace Target.Protocol.Nbd;

internal sealed class NbdOperation
{
    private readonly NbdConnection _connection;
    private readonly Action _onIoCompleted;
    private readonly Action _onExtentsCompleted;
    private ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter _ioAwaiter;
    private ConfiguredValueTaskAwaitable<ExtentList>.ConfiguredValueTaskAwaiter _extentsAwaiter;

    public NbdOperation(NbdConnection connection)
    {
        _connection = connection;
        _onIoCompleted = OnIoCompleted;
        _onExtentsCompleted = OnExtentsCompleted;
    }

    public NbdRequestHeader Header;

    /// <summary>Which step of a multi-step command runs (TRIM with FUA: trim, then flush).</summary>
    public int Step;

    /// <summary>Payload and reply bytes this operation holds, for the connection's backpressure.</summary>
    public long AccountedBytes;

    /// <summary>Buffer for header-only replies; allocated once with the operation.</summary>
    public readonly byte[] Small = new byte[NbdLimits.SmallReplyBytes];

    /// <summary>Rented buffer: read data with its reply header in front, or a long block status reply.</summary>
    public byte[]? Rented;

    /// <summary>Rented WRITE payload (its first <see cref="PayloadBytes"/> bytes).</summary>
    public byte[]? Payload;

    public int PayloadBytes;

    public byte[] ReplyBuffer = [];
    public int ReplyBytes;

    public ReadOnlyMemory<byte> Reply => ReplyBuffer.AsMemory(0, ReplyBytes);

    public void SetReply(byte[] buffer, int bytes)
    {
        ReplyBuffer = buffer;
        ReplyBytes = bytes;
    }

    public void RentPayload(int bytes)
    {
        Payload = ArrayPool<byte>.Shared.Rent(bytes);
        PayloadBytes = bytes;
    }

    public void ReturnPayload()
    {
        if (Payload is { } payload)
        {
            Payload = null;
            ArrayPool<byte>.Shared.Return(payload);
        }
        PayloadBytes = 0;
    }

    public void ReturnRented()
    {
        if (Rented is { } rented)
        {
            Rented = null;
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>Clears per-request state before the operation goes back to the pool.</summary>
    public void Reset()
    {
        ReturnPayload();
        ReturnRented();
        ReplyBuffer = [];
        ReplyBytes = 0;
        Step = 0;
        AccountedBytes = 0;
        Header = default;
    }

    /// <summary>Continues on the connection when <paramref name="task"/> completes, without allocating.</summary>
    public void AwaitIo(ValueTask task)
    {
        _ioAwaiter = task.ConfigureAwait(false).GetAwaiter();
        _ioAwaiter.UnsafeOnCompleted(_onIoCompleted);
    }

    public void AwaitExtents(ValueTask<ExtentList> task)
    {
        _extentsAwaiter = task.ConfigureAwait(false).GetAwaiter();
        _extentsAwaiter.UnsafeOnCompleted(_onExtentsCompleted);
    }

    private void OnIoCompleted()
    {
        Exception? error = null;
        try
        {
            _ioAwaiter.GetResult();
        }
        catch (Exception ex)
        {
            error = ex;
        }
        _ioAwaiter = default;
        _connection.OnIoCompleted(this, error, onReceiveLoop: false);
    }

    private void OnExtentsCompleted()
    {
        ExtentList? extents = null;
        Exception? error = null;
        try
        {
            extents = _extentsAwaiter.GetResult();
        }
        catch (Exception ex)
        {
            error = ex;
        }
        _extentsAwaiter = default;
        _connection.OnExtentsCompleted(this, extents, error, onReceiveLoop: false);
    }
}
