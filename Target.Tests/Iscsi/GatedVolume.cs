// A volume decorator for task management tests: reads of one chosen offset wait at a gate until
// the test opens it, so a command can be held "running on the logical unit" for as long as the
// test needs. Everything else goes straight to the inner volume.
using Target.Dedup;

namespace Target.Tests.Iscsi;

public sealed class GatedVolume(IBlockVolume inner, long gatedOffset) : IBlockVolume
{
    private readonly TaskCompletionSource _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _inside;

    /// <summary>Completes when a read reached the gate.</summary>
    public Task Entered => _entered.Task;

    /// <summary>Reads waiting at the gate now.</summary>
    public int Inside => Volatile.Read(ref _inside);

    public void Open() => _gate.TrySetResult();

    public string Name => inner.Name;
    public long SizeBytes => inner.SizeBytes;
    public int LogicalBlockSize => inner.LogicalBlockSize;
    public int PreferredBlockSize => inner.PreferredBlockSize;
    public Guid Uuid => inner.Uuid;
    public VolumeCapabilities Capabilities => inner.Capabilities;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
        => offset == gatedOffset ? ReadGatedAsync(offset, destination, ct) : inner.ReadAsync(offset, destination, ct);

    private async ValueTask ReadGatedAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        Interlocked.Increment(ref _inside);
        _entered.TrySetResult();
        try
        {
            await _gate.Task.WaitAsync(ct).ConfigureAwait(false);
            await inner.ReadAsync(offset, destination, ct).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _inside);
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags, CancellationToken ct) => inner.WriteAsync(offset, source, flags, ct);
    public ValueTask FlushAsync(CancellationToken ct) => inner.FlushAsync(ct);
    public ValueTask TrimAsync(long offset, long length, CancellationToken ct) => inner.TrimAsync(offset, length, ct);
    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags, CancellationToken ct) => inner.WriteZeroesAsync(offset, length, flags, ct);
    public ValueTask<ExtentList> GetAllocationAsync(long offset, long length, CancellationToken ct) => inner.GetAllocationAsync(offset, length, ct);
    public ValueTask<bool> CompareAndWriteAsync(long offset, ReadOnlyMemory<byte> expected, ReadOnlyMemory<byte> source, CancellationToken ct)
        => inner.CompareAndWriteAsync(offset, expected, source, ct);
    public ValueTask CopyAsync(long sourceOffset, IBlockVolume destination, long destinationOffset, long length, CancellationToken ct)
        => inner.CopyAsync(sourceOffset, destination, destinationOffset, length, ct);
}
