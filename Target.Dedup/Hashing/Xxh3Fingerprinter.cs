// XXH3-128 fingerprints: Low and High are XXH3-128's low and high 64 bits. Stateless, so
// thread-safe; allocation-free.
namespace Target.Dedup.Hashing;

public sealed class Xxh3Fingerprinter : IFingerprinter
{
    public static Xxh3Fingerprinter Instance { get; } = new();

    public FingerprintAlgorithm Algorithm => FingerprintAlgorithm.Xxh3_128;

    public Fingerprint Compute(ReadOnlySpan<byte> data)
    {
        Xxh3.Hash128(data, out ulong low64, out ulong high64);
        return new Fingerprint(low64, high64);
    }
}
