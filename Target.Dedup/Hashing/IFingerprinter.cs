// What the engine asks of a fingerprint function. Guarantees of every implementation:
// Compute is a pure function of the bytes, thread-safe, and allocates nothing.
namespace Target.Dedup.Hashing;

public interface IFingerprinter
{
    FingerprintAlgorithm Algorithm { get; }

    Fingerprint Compute(ReadOnlySpan<byte> data);
}
