// CRC-32C against published vectors (the check value, RFC 3720 B.4), Append's chaining
// rule, the instruction paths (three streams; folding with 512-bit carry-less multiplication
// where the CPU has it) against the table path for every length 0..300 and around the paths'
// round and block sizes (256 bytes up to 1 MiB), and Combine
// (CRC of a + b from the two CRCs) against computing it over the bytes.
using System.Runtime.InteropServices;
using System.Text;
using Target.Dedup.Hashing;

namespace Target.Tests.Hashing;

public sealed class Crc32CTests
{
    private const int AgreementSeed = 0x0C5C_32C0;

    public static TheoryData<string, uint> KnownVectors()
    {
        byte[] ascending = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        byte[] descending = Enumerable.Range(0, 32).Select(i => (byte)(31 - i)).ToArray();
        return new TheoryData<string, uint>
        {
            { "", 0x00000000 },
            { Convert.ToHexString(Encoding.ASCII.GetBytes("123456789")), 0xE3069283 },
            { Convert.ToHexString(new byte[32]), 0x8A9136AA },
            { Convert.ToHexString(Enumerable.Repeat((byte)0xFF, 32).ToArray()), 0x62A8AB43 },
            { Convert.ToHexString(ascending), 0x46DD794E },
            { Convert.ToHexString(descending), 0x113FDB5C },
        };
    }

    [Theory]
    [MemberData(nameof(KnownVectors))]
    public void KnownVectorsMatch(string inputHex, uint expected)
    {
        byte[] input = Convert.FromHexString(inputHex);

        Assert.Equal(expected, Crc32C.Compute(input));
        Assert.Equal(expected, Crc32C.AppendSoftware(0, input));
        if (Crc32C.IsHardwareAccelerated)
            Assert.Equal(expected, Crc32C.AppendHardware(0, input));
    }

    [Fact]
    public void InstructionPathExistsOnX64()
    {
        if (RuntimeInformation.ProcessArchitecture == Architecture.X64)
            Assert.True(Crc32C.IsHardwareAccelerated, "SSE4.2 CRC32 is expected on every x86-64 machine this runs on");
    }

    [Fact]
    public void AppendContinuesAFinishedCrc()
    {
        byte[] input = Encoding.ASCII.GetBytes("123456789");
        for (int split = 0; split <= input.Length; split++)
        {
            uint first = Crc32C.Compute(input.AsSpan(0, split));
            Assert.Equal(0xE3069283u, Crc32C.Append(first, input.AsSpan(split)));
        }
    }

    [Fact]
    public void InstructionAndTablePathsAgreeForEveryLengthUpTo300()
    {
        var random = new Random(AgreementSeed);
        byte[] buffer = new byte[300 + 8];
        for (int length = 0; length <= 300; length++) AssertPathsAgree(random, buffer, length, AgreementSeed);
    }

    [Theory]
    [InlineData(767)]
    [InlineData(768)]
    [InlineData(775)]
    [InlineData(1536)]
    [InlineData(4031)]
    [InlineData(4032)]
    [InlineData(4096)]
    [InlineData(4099)]
    [InlineData(8064 + 768 + 13)]
    [InlineData(65536)]
    [InlineData(1 << 20)]
    public void ThreeStreamPathAgreesWithTheTableAroundItsRoundSizes(int length)
    {
        // 768 bytes and more run three interleaved streams (rounds of 3 x 1344 and 3 x 256 bytes).
        var random = new Random(AgreementSeed + length);
        byte[] buffer = new byte[length + 8];
        for (int trial = 0; trial < 4; trial++) AssertPathsAgree(random, buffer, length, AgreementSeed + length);
    }

    /// <summary>Random bytes at a random misalignment, continued from a random CRC: Append and the instruction path equal the table.</summary>
    private static void AssertPathsAgree(Random random, byte[] buffer, int length, int seed)
    {
        random.NextBytes(buffer);
        int offset = random.Next(0, 8);
        uint start = (uint)random.NextInt64(0, 1L << 32);
        ReadOnlySpan<byte> input = buffer.AsSpan(offset, length);

        uint expected = Crc32C.AppendSoftware(start, input);

        Assert.True(expected == Crc32C.Append(start, input), $"seed {seed:x}: Append differs from the table at length {length}");
        if (Crc32C.IsHardwareAccelerated)
            Assert.True(expected == Crc32C.AppendHardware(start, input), $"seed {seed:x}: instruction path differs from the table at length {length}");
        if (Crc32C.IsHardwareAccelerated && RuntimeInformation.ProcessArchitecture == Architecture.X64)
            Assert.True(expected == Crc32C.AppendInstructions(start, input, fold: false), $"seed {seed:x}: three-stream path differs from the table at length {length}");
        if (Crc32C.CanFold)
            Assert.True(expected == Crc32C.AppendInstructions(start, input, fold: true), $"seed {seed:x}: folding path differs from the table at length {length}");
    }

    [Theory]
    [InlineData(255)]
    [InlineData(256)]
    [InlineData(257)]
    [InlineData(319)]
    [InlineData(320)]
    [InlineData(448)]
    [InlineData(511)]
    [InlineData(512)]
    [InlineData(513)]
    [InlineData(4096)]
    [InlineData(4096 + 63)]
    [InlineData(4096 + 64 + 15)]
    [InlineData(1 << 20)]
    public void FoldingPathAgreesWithTheTableAroundItsBlockSizes(int length)
    {
        // 256 bytes and more fold in 4 x 64-byte blocks, then 64-byte blocks, then the CRC instruction for the tail.
        var random = new Random(AgreementSeed ^ length);
        byte[] buffer = new byte[length + 8];
        for (int trial = 0; trial < 4; trial++) AssertPathsAgree(random, buffer, length, AgreementSeed ^ length);
    }

    [Fact]
    public void CombineEqualsTheCrcOfTheConcatenation()
    {
        var random = new Random(AgreementSeed);
        int[] lengths = [0, 1, 7, 8, 63, 512, 4095, 4096, 4097, 65536];
        foreach (int lengthA in lengths)
        {
            foreach (int lengthB in lengths)
            {
                byte[] a = new byte[lengthA], b = new byte[lengthB];
                random.NextBytes(a);
                random.NextBytes(b);
                uint expected = Crc32C.Compute([.. a, .. b]);
                Assert.True(expected == Crc32C.Combine(Crc32C.Compute(a), Crc32C.Compute(b), lengthB),
                    $"lengths {lengthA} + {lengthB}: combined CRC differs from the CRC of the bytes");
            }
        }
        // A batch's data CRC, chained chunk by chunk.
        byte[] batch = new byte[16 * 4096];
        random.NextBytes(batch);
        uint chained = Crc32C.Compute(batch.AsSpan(0, 4096));
        for (int i = 1; i < 16; i++) chained = Crc32C.Combine(chained, Crc32C.Compute(batch.AsSpan(i * 4096, 4096)), 4096);
        Assert.Equal(Crc32C.Compute(batch), chained);
        // The same with the operator for 4096 bytes computed once.
        CrcShift shift = Crc32C.ShiftFor(4096);
        uint shifted = Crc32C.Compute(batch.AsSpan(0, 4096));
        for (int i = 1; i < 16; i++) shifted = Crc32C.Combine(shifted, Crc32C.Compute(batch.AsSpan(i * 4096, 4096)), shift);
        Assert.Equal(Crc32C.Compute(batch), shifted);
    }
}
