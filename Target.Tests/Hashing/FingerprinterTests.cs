// The fingerprinters: SHA-256 keeps the digest's first 16 bytes, XXH3 keeps XXH3-128; the
// factory maps each algorithm to its fingerprinter and rejects unknown values; Compute is
// allocation-free and gives the same answers from many threads at once.
using System.Security.Cryptography;
using Target.Dedup.Hashing;

namespace Target.Tests.Hashing;

public sealed class FingerprinterTests
{
    private const int InputSeed = 0x5A256F00;

    [Fact]
    public void Sha256KeepsTheFirst16DigestBytes()
    {
        var random = new Random(InputSeed);
        byte[] written = new byte[Fingerprint.SizeBytes];
        foreach (int length in new[] { 0, 1, 55, 56, 64, 4096, 65536 })
        {
            byte[] input = new byte[length];
            random.NextBytes(input);

            Sha256Fingerprinter.Instance.Compute(input).WriteTo(written);

            Assert.Equal(SHA256.HashData(input).AsSpan(0, 16).ToArray(), written);
        }
    }

    [Fact]
    public void Xxh3KeepsBothHalves()
    {
        byte[] input = Xxh3TestInput.Stream(4096);

        Fingerprint fingerprint = Xxh3Fingerprinter.Instance.Compute(input);
        UInt128 hash = Xxh3.Hash128(input);

        Assert.Equal((ulong)hash, fingerprint.Low);
        Assert.Equal((ulong)(hash >> 64), fingerprint.High);
        Assert.Equal(Xxh3TestInput.Canonical(hash), fingerprint.ToString());
    }

    [Theory]
    [InlineData(FingerprintAlgorithm.Xxh3_128, typeof(Xxh3Fingerprinter))]
    [InlineData(FingerprintAlgorithm.Sha256, typeof(Sha256Fingerprinter))]
    public void FactoryReturnsTheAlgorithmsFingerprinter(FingerprintAlgorithm algorithm, Type expected)
    {
        IFingerprinter fingerprinter = Fingerprinters.Create(algorithm);

        Assert.IsType(expected, fingerprinter);
        Assert.Equal(algorithm, fingerprinter.Algorithm);
    }

    [Fact]
    public void PersistedAlgorithmCodesDoNotChange()
    {
        Assert.Equal(1, (int)FingerprintAlgorithm.Xxh3_128);
        Assert.Equal(2, (int)FingerprintAlgorithm.Sha256);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void FactoryRejectsUnknownAlgorithms(int code)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Fingerprinters.Create((FingerprintAlgorithm)code));
    }

    [Theory]
    [InlineData(FingerprintAlgorithm.Xxh3_128)]
    [InlineData(FingerprintAlgorithm.Sha256)]
    public void ComputeAllocatesNothing(FingerprintAlgorithm algorithm)
    {
        IFingerprinter fingerprinter = Fingerprinters.Create(algorithm);
        byte[] chunk = Xxh3TestInput.Stream(4096);
        ulong sink = 0;
        for (int warmup = 0; warmup < 10; warmup++)
            sink += fingerprinter.Compute(chunk).Low;

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
            sink += fingerprinter.Compute(chunk).Low;
        long allocatedBytes = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocatedBytes);
        Assert.NotEqual(0UL, sink);
    }

    [Theory]
    [InlineData(FingerprintAlgorithm.Xxh3_128)]
    [InlineData(FingerprintAlgorithm.Sha256)]
    public void ConcurrentCallsAgreeWithSequentialOnes(FingerprintAlgorithm algorithm)
    {
        IFingerprinter fingerprinter = Fingerprinters.Create(algorithm);
        var random = new Random(InputSeed);
        byte[][] chunks = Enumerable.Range(0, 64).Select(_ =>
        {
            byte[] chunk = new byte[random.Next(0, 8192)];
            random.NextBytes(chunk);
            return chunk;
        }).ToArray();
        Fingerprint[] expected = chunks.Select(c => fingerprinter.Compute(c)).ToArray();

        var mismatches = 0;
        Parallel.For(0, 8, new ParallelOptions { MaxDegreeOfParallelism = 8 }, _ =>
        {
            for (int round = 0; round < 50; round++)
            {
                for (int i = 0; i < chunks.Length; i++)
                {
                    if (fingerprinter.Compute(chunks[i]) != expected[i])
                        Interlocked.Increment(ref mismatches);
                }
            }
        });

        Assert.Equal(0, mismatches);
    }
}
