// Maps a persisted FingerprintAlgorithm to its fingerprinter. Guarantees: each algorithm has
// one shared, thread-safe instance; an unknown value throws rather than picking a default.
namespace Target.Dedup.Hashing;

public static class Fingerprinters
{
    public static IFingerprinter Create(FingerprintAlgorithm algorithm) => algorithm switch
    {
        FingerprintAlgorithm.Xxh3_128 => Xxh3Fingerprinter.Instance,
        FingerprintAlgorithm.Sha256 => Sha256Fingerprinter.Instance,
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm), algorithm, "unknown fingerprint algorithm"),
    };
}
