// Fingerprint algorithms by their persisted code. Guarantees: the numeric values are stored
// on disk and never change meaning; 0 is not an algorithm.
namespace Target.Dedup.Hashing;

public enum FingerprintAlgorithm
{
    Xxh3_128 = 1,
    /// <summary>The first 16 bytes of SHA-256.</summary>
    Sha256 = 2,
}
