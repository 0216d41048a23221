// XXH3-128 against `xxhsum -H2` reference values (Xxh3ReferenceVectors.cs) for every length
// 0..10240 and 50 unaligned slices up to 64 KiB, on every kernel this CPU supports; the
// vector kernels against the scalar one on seeded random inputs; no allocation per hash.
using Target.Dedup.Hashing;

namespace Target.Tests.Hashing;

public sealed class Xxh3Tests
{
    private const int KernelAgreementSeed = 0x5EED_0128;

    private static readonly int[] s_allocationCheckLengths = [0, 2, 7, 15, 120, 230, 4096, 8192];

    public static TheoryData<string> SupportedKernels()
    {
        var data = new TheoryData<string>();
        foreach (Xxh3Kernel kernel in Enum.GetValues<Xxh3Kernel>())
        {
            if (Xxh3.IsSupported(kernel))
                data.Add(kernel.ToString());
        }
        return data;
    }

    [Fact]
    public void EmptyInputHasTheReferenceHash()
    {
        UInt128 hash = Xxh3.Hash128(ReadOnlySpan<byte>.Empty);

        Assert.Equal("99aa06d3014798d86001c324468d497f", Xxh3TestInput.Canonical(hash));
        Assert.Equal(0x99aa06d3014798d8UL, (ulong)(hash >> 64));
        Assert.Equal(0x6001c324468d497fUL, (ulong)hash);
    }

    [Fact]
    public void ReferenceTableCoversEveryLength()
    {
        string[] lines = SweepLines();

        Assert.Equal(Xxh3ReferenceVectors.SweepMaxLength + 1, lines.Length);
        Assert.Equal("99aa06d3014798d86001c324468d497f", lines[0]);
        Assert.All(lines, line => Assert.Matches("^[0-9a-f]{32}$", line));
        Assert.Equal(50, Xxh3ReferenceVectors.Random.Length);
    }

    [Theory]
    [MemberData(nameof(SupportedKernels))]
    public void EveryLengthUpTo10240MatchesXxhsum(string kernelName)
    {
        Xxh3Kernel kernel = Enum.Parse<Xxh3Kernel>(kernelName);
        string[] expected = SweepLines();
        byte[] stream = Xxh3TestInput.Stream(Xxh3ReferenceVectors.SweepMaxLength);

        for (int length = 0; length < expected.Length; length++)
        {
            Xxh3.Hash128(stream.AsSpan(0, length), kernel, out ulong low, out ulong high);
            string actual = Xxh3TestInput.Canonical(new UInt128(high, low));
            if (actual != expected[length])
                Assert.Fail($"XXH3-128 ({kernel} kernel) of the first {length} bytes of the test stream: expected {expected[length]}, got {actual} (first failing length: {length})");
        }
    }

    [Theory]
    [MemberData(nameof(SupportedKernels))]
    public void RandomSlicesUpTo64KiBMatchXxhsum(string kernelName)
    {
        Xxh3Kernel kernel = Enum.Parse<Xxh3Kernel>(kernelName);
        byte[] stream = Xxh3TestInput.Stream(65536 + 64);

        for (int k = 0; k < Xxh3ReferenceVectors.Random.Length; k++)
        {
            (int offset, int length, string expected) = Xxh3ReferenceVectors.Random[k];
            Xxh3.Hash128(stream.AsSpan(offset, length), kernel, out ulong low, out ulong high);
            string actual = Xxh3TestInput.Canonical(new UInt128(high, low));
            if (actual != expected)
                Assert.Fail($"XXH3-128 ({kernel} kernel) of random case {k} (offset {offset}, length {length}): expected {expected}, got {actual}");
        }
    }

    [Theory]
    [MemberData(nameof(SupportedKernels))]
    public void KernelAgreesWithScalarOnSeededRandomInputs(string kernelName)
    {
        Xxh3Kernel kernel = Enum.Parse<Xxh3Kernel>(kernelName);
        var random = new Random(KernelAgreementSeed);
        byte[] buffer = new byte[3 * 65536 + 64];
        random.NextBytes(buffer);

        int[] edges = [241, 255, 256, 1023, 1024, 1025, 1087, 1088, 1089, 4096, 65535, 65536, 65537, 3 * 65536];
        for (int k = 0; k < 300 + edges.Length; k++)
        {
            int length = k < edges.Length ? edges[k] : random.Next(0, 3 * 65536 + 1);
            int offset = random.Next(0, 64);
            ReadOnlySpan<byte> input = buffer.AsSpan(offset, length);

            Xxh3.Hash128(input, Xxh3Kernel.Scalar, out ulong expectedLow, out ulong expectedHigh);
            Xxh3.Hash128(input, kernel, out ulong low, out ulong high);

            if (low != expectedLow || high != expectedHigh)
                Assert.Fail($"seed {KernelAgreementSeed:x}, case {k}: {kernel} and scalar kernels differ at length {length}, offset {offset}");
        }
    }

    [Fact]
    public void BothOverloadsGiveTheSameHalves()
    {
        byte[] input = Xxh3TestInput.Stream(4096);
        foreach (int length in new[] { 0, 3, 8, 16, 100, 200, 4096 })
        {
            UInt128 hash = Xxh3.Hash128(input.AsSpan(0, length));
            Xxh3.Hash128(input.AsSpan(0, length), out ulong low, out ulong high);

            Assert.Equal((ulong)hash, low);
            Assert.Equal((ulong)(hash >> 64), high);
        }
    }

    [Fact]
    public void HashingAllocatesNothing()
    {
        byte[] input = Xxh3TestInput.Stream(8192);
        ulong sink = 0;
        for (int warmup = 0; warmup < 3; warmup++)
            sink += Hash(input);

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
            sink += Hash(input);
        long allocatedBytes = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocatedBytes);
        Assert.NotEqual(0UL, sink);

        static ulong Hash(byte[] input)
        {
            ulong sum = 0;
            foreach (int length in s_allocationCheckLengths)
            {
                Xxh3.Hash128(input.AsSpan(0, length), out ulong low, out ulong high);
                sum += low ^ high;
            }
            return sum;
        }
    }

    private static string[] SweepLines() =>
        Xxh3ReferenceVectors.Sweep.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
