using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// QEMU's block layer as an NBD client: qemu-img convert + compare, and qemu-io pattern writes/reads
/// with discard and write_zeroes (unaligned too), checked again on a fresh connection and after kill -9
/// of a flushed write-through server.
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class QemuTests(ITestOutputHelper output)
{
    private const long MiB = 1L << 20;

    [Fact]
    public async Task Qemu_img_convert_then_compare_is_identical()
    {
        using var temp = new TempDirectory();
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["qv:64M"] });

        // A source image with data, a hole and a run of zeros.
        string source = temp["source.img"];
        TestData.WriteRandomFile(source, seed: 6401, 64 * MiB, output);
        using (var file = new FileStream(source, FileMode.Open, FileAccess.Write))
        {
            file.Position = 8 * MiB;
            file.Write(new byte[4 * MiB]);
        }

        await Tool.RunCheckedAsync("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, target.NbdUri("qv")], Timeouts.Medium, output);
        ToolResult compare = await Tool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, target.NbdUri("qv")], Timeouts.Medium, output);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare: {compare.Stdout}{compare.Stderr}");
        Assert.Contains("Images are identical", compare.Stdout, StringComparison.Ordinal);

        // A one-byte change must be seen.
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", target.NbdUri("qv"), "-c", "write -P 0x01 12345 1"], Timeouts.Short, output);
        ToolResult differ = await Tool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, target.NbdUri("qv")], Timeouts.Medium, output);
        Assert.Equal(1, differ.ExitCode);
    }

    [Fact]
    public async Task Qemu_io_patterns_write_read_discard_and_write_zeroes()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:1G"], WriteMode = "wt" });

        string[] writes =
        [
            "write -P 0xab 0 1M",
            "write -P 0xcd 1M 1M",
            "write -z 1M 256k",            // zero the first 256 KiB of the 0xcd range
            "discard 1536k 256k",          // trim inside it
            "write -P 0x11 4095 8193",     // unaligned, crosses three chunks
            "write -P 0x22 100M 4k",
            "write -z -u 100M 4k",         // zero with unmap
            "write -P 0x33 200M 512",      // sub-chunk
            "flush",
        ];
        string[] reads =
        [
            "read -P 0xab 0 4095",
            "read -P 0x11 4095 8193",
            "read -P 0xab 12288 1036288",
            "read -P 0 1M 256k",
            "read -P 0xcd 1280k 256k",
            "read -P 0 1536k 256k",
            "read -P 0xcd 1792k 256k",
            "read -P 0 100M 4k",
            "read -P 0x33 200M 512",
            "read -P 0 200M+512 3584",
            "read -P 0 500M 1M",           // never written
        ];

        await QemuIoAsync(target, writes.Concat(reads));
        // A fresh connection sees the same.
        await QemuIoAsync(target, reads);

        // Acknowledged + flushed in write-through mode: survives kill -9.
        target.Kill();
        await target.StartAgainAsync();
        await QemuIoAsync(target, reads);
    }

    private async Task QemuIoAsync(TargetProcess target, IEnumerable<string> commands)
    {
        var args = new List<string> { "-f", "raw", target.NbdUri() };
        foreach (string command in commands)
            args.AddRange(["-c", command.Replace("200M+512", (200 * MiB + 512).ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)]);
        ToolResult result = await Tool.RunAsync("qemu-io", args, Timeouts.Medium, output);
        output.WriteLine(result.Stdout);
        Assert.DoesNotContain("Pattern verification failed", result.Stdout + result.Stderr, StringComparison.Ordinal);
        result.AssertSuccess();
    }
}
