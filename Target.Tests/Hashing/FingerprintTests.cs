// Fingerprint: the 16-byte serialized layout (Low then High, little-endian), round trips,
// equality, Prefix64 and the hex form.
using System.Buffers.Binary;
using Target.Dedup.Hashing;

namespace Target.Tests.Hashing;

public sealed class FingerprintTests
{
    private const int RoundTripSeed = 0x0F1B_6E12;

    [Fact]
    public void RoundTripsThroughWriteToAndReadFrom()
    {
        var random = new Random(RoundTripSeed);
        Span<byte> buffer = stackalloc byte[Fingerprint.SizeBytes];
        for (int i = 0; i < 1000; i++)
        {
            var original = new Fingerprint((ulong)random.NextInt64(), (ulong)random.NextInt64() ^ (ulong)random.Next() << 63);

            original.WriteTo(buffer);
            Fingerprint read = Fingerprint.ReadFrom(buffer);

            Assert.True(original == read, $"seed {RoundTripSeed:x}, case {i}: {original} read back as {read}");
        }
    }

    [Fact]
    public void LayoutIsLowThenHighLittleEndian()
    {
        var fingerprint = new Fingerprint(0x0706050403020100UL, 0x0F0E0D0C0B0A0908UL);
        byte[] bytes = new byte[Fingerprint.SizeBytes];

        fingerprint.WriteTo(bytes);

        Assert.Equal(Enumerable.Range(0, 16).Select(i => (byte)i).ToArray(), bytes);
        Assert.Equal(0x0706050403020100UL, BinaryPrimitives.ReadUInt64LittleEndian(bytes));
    }

    [Fact]
    public void WriteToLeavesBytesPastSixteenAlone()
    {
        byte[] bytes = Enumerable.Repeat((byte)0xAA, 20).ToArray();

        new Fingerprint(1, 2).WriteTo(bytes);

        Assert.All(bytes[16..], b => Assert.Equal(0xAA, b));
    }

    [Fact]
    public void ShortSpansAreRejected()
    {
        Assert.Throws<ArgumentException>(() => new Fingerprint(1, 2).WriteTo(new byte[15]));
        Assert.Throws<ArgumentException>(() => Fingerprint.ReadFrom(new byte[15]));
    }

    [Fact]
    public void Prefix64IsLow()
    {
        var fingerprint = new Fingerprint(0x1122334455667788UL, 0x99AABBCCDDEEFF00UL);

        Assert.Equal(0x1122334455667788UL, fingerprint.Prefix64);
        Assert.Equal(fingerprint.Low, fingerprint.Prefix64);
    }

    [Fact]
    public void ToStringIsHighThenLowAs32HexDigits()
    {
        var fingerprint = new Fingerprint(0x6001c324468d497fUL, 0x99aa06d3014798d8UL);

        Assert.Equal("99aa06d3014798d86001c324468d497f", fingerprint.ToString());
        Assert.Equal("0000000000000000" + "0000000000000001", new Fingerprint(1, 0).ToString());
    }

    [Fact]
    public void EqualityComparesBothHalves()
    {
        var a = new Fingerprint(1, 2);

        Assert.Equal(a, new Fingerprint(1, 2));
        Assert.Equal(a.GetHashCode(), new Fingerprint(1, 2).GetHashCode());
        Assert.NotEqual(a, new Fingerprint(1, 3));
        Assert.NotEqual(a, new Fingerprint(0, 2));
        Assert.True(a != new Fingerprint(2, 1));
        Assert.False(a.Equals((object?)null));
        Assert.Equal(default, new Fingerprint(0, 0));
    }
}
