// A seeded fault-injecting decorator over a real back-end device, plugged in through
// PoolOptions.DeviceDecorator. Faults are armed by the test and fire on a chosen write:
//   Tear: the write persists only a prefix of its sectors, then the "process dies": this and
//         every later write or flush throws IOException (the pool stops; the test abandons it).
//   Drop: the write reports success but persists nothing (a lying device).
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
        }
        _inner.Write(offsetBytes, source);
    }

    public void Flush()
    {
        if (Crashed) throw new IOException("simulated crash: the process is dead");
        _inner.Flush();
    }

    public void Dispose() => _inner.Dispose();
}
