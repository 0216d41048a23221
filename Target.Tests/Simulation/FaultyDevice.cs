// A seeded fault-injecting decorator over a real back-end device, plugged in through
// PoolOptions.DeviceDecorator. Faults are armed by the test and fire on a chosen write:
//   Tear: the write persists only a prefix of its sectors, then the "process dies": this and
//         every later write or flush throws IOException (the pool stops; the test abandons it).
//   Drop: the write reports success but persists nothing (a lying device).
//   LoseEarlierWrites: at the first flush that follows two or more writes that are not one run
//         of adjacent ranges (so not a group of log batches, but e.g. the cleaner's moved data
//         and its batch), every one of those writes but the last is undone (its old bytes come
//         back), then the "process dies": a power loss that kept a later write and lost an
//         earlier one (the disk reordered them).
//   PowerLoss: at a chosen write the power fails: that write never happens, and each write since
//         the last flush is, at random, kept, lost (its old bytes come back) or torn (a random
//         subset of its sectors comes back), as a disk with a volatile write cache may leave
//         them; then the "process dies".
//   BeforeWrite: a callback run before each write (outside the device's lock), to make another
//         request happen exactly while a journal write is in flight.
// Reads are never faulted. Everything random comes from the seed given at construction.
using Target.Dedup.Device;

namespace Target.Tests.Simulation;

internal sealed class FaultyDevice : IBlockDevice
{
    private const int Sector = DeviceConstants.SectorBytes;
    private readonly IBlockDevice _inner;
    private readonly Random _random;
    private readonly object _gate = new();
    private int _tearCountdown = -1;
    private int _dropCountdown = -1;

    public FaultyDevice(IBlockDevice inner, int seed)
    {
        _inner = inner;
        _random = new Random(seed);
    }

    public long SizeBytes => _inner.SizeBytes;

    public string Name => "faulty:" + _inner.Name;

    public bool Crashed { get; private set; }

    public int Writes { get; private set; }

    /// <summary>Offset and sector count of the last torn write, and how many of its sectors persisted.</summary>
    public (long Offset, int Sectors, int Kept)? LastTear { get; private set; }

    public (long Offset, int Sectors)? LastDrop { get; private set; }

    /// <summary>The write after <paramref name="writesBefore"/> more writes tears (0: the next write).</summary>
    public void ArmTear(int writesBefore = 0)
    {
        lock (_gate) _tearCountdown = writesBefore;
    }

    public void ArmDrop(int writesBefore = 0)
    {
        lock (_gate) _dropCountdown = writesBefore;
    }

    /// <summary>Offset and sector count of the first write undone by the armed reordering power loss.</summary>
    public (long Offset, int Sectors)? LastLoss { get; private set; }

    private bool _loseEarlierWrites;
    private readonly List<(long Offset, AlignedBuffer Old)> _unflushed = new();

    public void ArmLoseEarlierWrites()
    {
        lock (_gate) { _loseEarlierWrites = true; DisposeUnflushed(); }
    }

    private int _powerLossCountdown = -1;
    private bool _powerLossLosesAll;

    /// <summary>
    /// The power fails at the write after <paramref name="writesBefore"/> more writes (0: the next
    /// write); with <paramref name="loseAll"/> every write since the last flush is lost. Writes are
    /// recorded from the first arming on (earlier ones count as flushed); arming again keeps the record.
    /// </summary>
    public void ArmPowerLoss(int writesBefore, bool loseAll = false)
    {
        lock (_gate)
        {
            if (_powerLossCountdown < 0) DisposeUnflushed();
            _powerLossCountdown = writesBefore;
            _powerLossLosesAll = loseAll;
        }
    }

    /// <summary>What the power loss did to the writes since the last flush: kept, lost and torn.</summary>
    public (int Kept, int Lost, int Torn)? LastPowerLoss { get; private set; }

    /// <summary>Undoes each unflushed write wholly, partly or not at all (newest first, so every sector ends as one of the values it held since the flush).</summary>
    private void LosePower()
    {
        int kept = 0, lost = 0, torn = 0;
        for (int i = _unflushed.Count - 1; i >= 0; i--)
        {
            (long offset, AlignedBuffer old) = _unflushed[i];
            switch (_powerLossLosesAll ? 1 : _random.Next(3))
            {
                case 0:
                    kept++;
                    break;
                case 1:
                    _inner.Write(offset, old.Span);
                    lost++;
                    break;
                default:
                    using (var sector = new AlignedBuffer(Sector))
                    {
                        for (int k = 0; k < old.Span.Length / Sector; k++)
                        {
                            if (_random.Next(2) == 0) continue;
                            old.Span.Slice(k * Sector, Sector).CopyTo(sector.Span);
                            _inner.Write(offset + (long)k * Sector, sector.Span);
                        }
                    }
                    torn++;
                    break;
            }
        }
        LastPowerLoss = (kept, lost, torn);
        DisposeUnflushed();
        _powerLossCountdown = -1;
        Crashed = true;
    }

    public Action<long, int>? BeforeWrite { get; set; }

    public void Read(long offsetBytes, Span<byte> destination) => _inner.Read(offsetBytes, destination);

    public void Write(long offsetBytes, ReadOnlySpan<byte> source)
    {
        BeforeWrite?.Invoke(offsetBytes, source.Length);
        lock (_gate)
        {
            if (Crashed) throw new IOException("simulated crash: the process is dead");
            Writes++;
            int sectors = source.Length / Sector;
            if (_tearCountdown >= 0 && _tearCountdown-- == 0)
            {
                int kept = _random.Next(0, sectors); // 0 .. sectors-1: never the whole write
                if (kept > 0) _inner.Write(offsetBytes, source[..(kept * Sector)]);
                LastTear = (offsetBytes, sectors, kept);
                Crashed = true;
                throw new IOException($"simulated crash: torn write at {offsetBytes}, {kept} of {sectors} sectors persisted");
            }
            if (_dropCountdown >= 0 && _dropCountdown-- == 0)
            {
                LastDrop = (offsetBytes, sectors);
                return;
            }
            if (_powerLossCountdown >= 0 && _powerLossCountdown-- == 0)
            {
                LosePower();
                throw new IOException($"simulated power loss at the write of {sectors} sectors at {offsetBytes}: {LastPowerLoss} of the writes since the last flush kept/lost/torn");
            }
            if (_loseEarlierWrites || _powerLossCountdown >= 0)
            {
                // O_DIRECT devices want aligned buffers.
                var old = new AlignedBuffer(source.Length);
                _inner.Read(offsetBytes, old.Span);
                _unflushed.Add((offsetBytes, old));
                // Under the lock: no write may reach the disk after the power failed.
                _inner.Write(offsetBytes, source);
                return;
            }
        }
        _inner.Write(offsetBytes, source);
    }

    /// <summary>Gathered into one buffer and written as one write (so every fault applies to it alike).</summary>
    public unsafe void WriteGathered(long offsetBytes, ReadOnlySpan<byte> head, ReadOnlySpan<nint> pages)
    {
        using var whole = new AlignedBuffer(head.Length + pages.Length * Sector);
        head.CopyTo(whole.Span);
        for (int i = 0; i < pages.Length; i++)
            new ReadOnlySpan<byte>((void*)pages[i], Sector).CopyTo(whole.Span[(head.Length + i * Sector)..]);
        Write(offsetBytes, whole.Span);
    }

    public void Flush()
    {
        lock (_gate)
        {
            if (Crashed) throw new IOException("simulated crash: the process is dead");
            if (_loseEarlierWrites && _unflushed.Count >= 2 && !Contiguous(_unflushed))
            {
                for (int i = _unflushed.Count - 2; i >= 0; i--) _inner.Write(_unflushed[i].Offset, _unflushed[i].Old.Span);
                LastLoss = (_unflushed[0].Offset, _unflushed[0].Old.Span.Length / Sector);
                _loseEarlierWrites = false;
                DisposeUnflushed();
                Crashed = true;
                throw new IOException("simulated crash: power lost with the last write on disk and the earlier ones not");
            }
            DisposeUnflushed();
        }
        _inner.Flush();
    }

    /// <summary>The writes form one run of adjacent ranges (a group of log batches): not the case the reordering loss is armed for.</summary>
    private static bool Contiguous(List<(long Offset, AlignedBuffer Old)> writes)
    {
        var ranges = writes.Select(w => (w.Offset, End: w.Offset + w.Old.Span.Length)).OrderBy(r => r.Offset).ToList();
        for (int i = 1; i < ranges.Count; i++)
            if (ranges[i].Offset != ranges[i - 1].End) return false;
        return true;
    }

    private void DisposeUnflushed()
    {
        foreach ((long _, AlignedBuffer old) in _unflushed) old.Dispose();
        _unflushed.Clear();
    }

    public void Dispose() => _inner.Dispose();
}
