// SHA-256 fingerprints: the digest's first 16 bytes read as Fingerprint.ReadFrom does, so
// WriteTo gives back those bytes. Stateless (one-shot HashData), so thread-safe; the digest
// lives on the stack, nothing is allocated.
using System.Security.Cryptography;

namespace Target.Dedup.Hashing;

public sealed class Sha256Fingerprinter : IFingerprinter
{
    public static Sha256Fingerprinter Instance { get; } = new();

    public FingerprintAlgorithm Algorithm => FingerprintAlgorithm.Sha256;

    public Fingerprint Compute(ReadOnlySpan<byte> data)
    {
        Span<byte> digest = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(data, digest);
        return Fingerprint.ReadFrom(digest);
    }
}
