using Target.Cli;

namespace Target.Tests.Cli;

public sealed class SizeParserTests
{
    [Theory]
    [InlineData("0", 0L)]
    [InlineData("4096", 4096L)]
    [InlineData("512K", 512L * 1024)]
    [InlineData("512k", 512L * 1024)]
    [InlineData("64M", 64L << 20)]
    [InlineData("4G", 4L << 30)]
    [InlineData("10G", 10L << 30)]
    [InlineData("1T", 1L << 40)]
    [InlineData("2P", 2L << 50)]
    [InlineData("4GiB", 4L << 30)]
    [InlineData("4gb", 4L << 30)]
    [InlineData("100B", 100L)]
    [InlineData(" 8M ", 8L << 20)]
    [InlineData("8 M", 8L << 20)]
    [InlineData("8191P", 8191L << 50)]
    public void Parses_sizes_in_powers_of_1024(string text, long expected)
    {
        Assert.Equal(expected, SizeParser.Parse(text));
        Assert.True(SizeParser.TryParse(text, out long bytes));
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    [InlineData("G")]
    [InlineData("-1")]
    [InlineData("1.5G")]
    [InlineData("4Q")]
    [InlineData("4GG")]
    [InlineData("4Gx")]
    [InlineData("0x100")]
    [InlineData("8192P")]                 // 2^63: overflows long
    [InlineData("99999999999999999999")]  // too many digits
    public void Rejects_bad_sizes(string text)
    {
        Assert.False(SizeParser.TryParse(text, out _, out string? error));
        Assert.False(string.IsNullOrEmpty(error));
        Assert.Throws<FormatException>(() => SizeParser.Parse(text));
    }

    [Theory]
    [InlineData(0L, "0")]
    [InlineData(1536L, "1536")]
    [InlineData(4096L, "4K")]
    [InlineData(10L << 30, "10G")]
    [InlineData((1L << 30) + (1L << 20), "1025M")]
    [InlineData(3L << 40, "3T")]
    public void Formats_exactly_and_round_trips(long bytes, string expected)
    {
        Assert.Equal(expected, SizeParser.Format(bytes));
        Assert.Equal(bytes, SizeParser.Parse(SizeParser.Format(bytes)));
    }

    [Fact]
    public void Round_trips_seeded_random_sizes()
    {
        const int seed = 1024;
        var random = new Random(seed);
        for (int i = 0; i < 10_000; i++)
        {
            long bytes = random.NextInt64(0, long.MaxValue) >> random.Next(0, 62);
            Assert.True(bytes == SizeParser.Parse(SizeParser.Format(bytes)), $"seed {seed}: {bytes}");
        }
    }

    [Theory]
    [InlineData(0, "0 B")]
    [InlineData(1023, "1023 B")]
    [InlineData(1536, "1.5 KiB")]
    [InlineData(4L << 30, "4.0 GiB")]
    public void Human_form(long bytes, string expected) => Assert.Equal(expected, SizeParser.Human(bytes));
}
