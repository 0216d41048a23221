// libiscsi's tools and QEMU's iSCSI block driver against a real `target serve` process on free
// loopback ports: discovery, INQUIRY / VPD, READ CAPACITY, qemu-img convert + compare, and the
// same bytes seen over iSCSI and NBD in both directions.
using Target.Tests.Interop;
using Xunit.Abstractions;

namespace Target.Tests.Iscsi;

[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class IscsiInteropTests(ITestOutputHelper output)
{
    private const long MiB = 1L << 20;

    [Fact]
    public async Task Iscsi_ls_discovers_every_volume_with_its_portal_and_lun()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:64M", "big:1G:4096"] });
        string portal = $"iscsi://{target.IscsiEndPoint}";

        ToolResult list = await Tool.RunCheckedAsync("iscsi-ls", [portal], Timeouts.Short, output);
        Assert.Contains($"Target:{TargetProcess.IscsiTargetName("vol0")} Portal:{target.IscsiEndPoint},1", list.Stdout, StringComparison.Ordinal);
        Assert.Contains($"Target:{TargetProcess.IscsiTargetName("big")} Portal:{target.IscsiEndPoint},1", list.Stdout, StringComparison.Ordinal);

        ToolResult luns = await Tool.RunCheckedAsync("iscsi-ls", ["-s", portal], Timeouts.Short, output);
        Assert.Contains("Lun:0", luns.Stdout, StringComparison.Ordinal);
        Assert.Contains("Type:DIRECT_ACCESS", luns.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Iscsi_inq_reads_standard_inquiry_and_vpd_pages()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:64M"] });
        string url = target.IscsiUri("vol0");

        ToolResult standard = await Tool.RunCheckedAsync("iscsi-inq", [url], Timeouts.Short, output);
        Assert.Contains("Peripheral Device Type:DIRECT_ACCESS", standard.Stdout, StringComparison.Ordinal);
        Assert.Contains("Vendor:TARGET", standard.Stdout, StringComparison.Ordinal);
        Assert.Contains("Product:DEDUP VOLUME", standard.Stdout, StringComparison.Ordinal);
        Assert.Contains("TPGS:1", standard.Stdout, StringComparison.Ordinal);

        ToolResult pages = await Tool.RunCheckedAsync("iscsi-inq", ["-e", "1", "-c", "0", url], Timeouts.Short, output);
        foreach (string page in new[] { "0x80", "0x83", "0xb0", "0xb1", "0xb2" })
            Assert.Contains($"Page:{page}", pages.Stdout, StringComparison.Ordinal);

        ToolResult identification = await Tool.RunCheckedAsync("iscsi-inq", ["-e", "1", "-c", "131", url], Timeouts.Short, output);
        Assert.Contains("Designator Type:(3) NAA", identification.Stdout, StringComparison.Ordinal);
        Assert.Contains("Designator Type:(4) RELATIVE_TARGET_PORT", identification.Stdout, StringComparison.Ordinal);
        Assert.Contains($"Designator:[{TargetProcess.IscsiTargetName("vol0")},t,0x0001]", identification.Stdout, StringComparison.Ordinal);

        ToolResult provisioning = await Tool.RunCheckedAsync("iscsi-inq", ["-e", "1", "-c", "178", url], Timeouts.Short, output);
        Assert.Contains("lbpu:1", provisioning.Stdout, StringComparison.Ordinal);
        Assert.Contains("lbprz:1", provisioning.Stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(512, 3)]
    [InlineData(4096, 0)]
    public async Task Iscsi_readcapacity16_reports_size_block_size_and_provisioning(int blockBytes, int exponent)
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = [$"vol0:256M:{blockBytes}"] });
        ToolResult capacity = await Tool.RunCheckedAsync("iscsi-readcapacity16", [target.IscsiUri("vol0")], Timeouts.Short, output);
        Assert.Contains($"RETURNED LOGICAL BLOCK ADDRESS:{256 * MiB / blockBytes - 1}", capacity.Stdout, StringComparison.Ordinal);
        Assert.Contains($"LOGICAL BLOCK LENGTH IN BYTES:{blockBytes}", capacity.Stdout, StringComparison.Ordinal);
        Assert.Contains($"LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:{exponent}", capacity.Stdout, StringComparison.Ordinal);
        Assert.Contains("LBPME:1 LBPRZ:1", capacity.Stdout, StringComparison.Ordinal);
        Assert.Contains($"Total size:{256 * MiB}", capacity.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Unknown_target_is_refused_at_login()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:64M"] });
        ToolResult inq = await Tool.RunAsync("iscsi-inq", [target.IscsiUri("nosuchvolume")], Timeouts.Short, output);
        Assert.NotEqual(0, inq.ExitCode);
        Assert.Contains("Target not found", inq.Stdout + inq.Stderr, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Qemu_img_convert_then_compare_over_iscsi_is_identical()
    {
        using var temp = new TempDirectory();
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["qv:64M"] });
        string url = target.IscsiUri("qv");

        // Random data with a 4 MiB run of zeros in the middle.
        string source = temp["source.img"];
        TestData.WriteRandomFile(source, seed: 3260, 64 * MiB, output);
        using (var file = new FileStream(source, FileMode.Open, FileAccess.Write))
        {
            file.Position = 8 * MiB;
            file.Write(new byte[4 * MiB]);
        }

        await QemuImgAsync(["convert", "-n", "-f", "raw", "-O", "raw", source, url]);
        ToolResult compare = await Tool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, url], Timeouts.Medium, output);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare: {compare.Stdout}{compare.Stderr}");
        Assert.Contains("Images are identical", compare.Stdout, StringComparison.Ordinal);

        // Read back through iSCSI into a file as well: byte-identical.
        string back = temp["back.img"];
        await QemuImgAsync(["convert", "-f", "raw", "-O", "raw", url, back]);
        Assert.Equal(-1, TestData.FirstDifference(source, back));

        // A one-byte change over NBD is seen over iSCSI.
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", target.NbdUri("qv"), "-c", "write -P 0x01 12345 1"], Timeouts.Short, output);
        ToolResult differ = await Tool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, url], Timeouts.Medium, output);
        Assert.Equal(1, differ.ExitCode);
    }

    [Fact]
    public async Task Data_written_over_iscsi_reads_back_over_nbd_and_the_reverse()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["x:128M"] });
        string iscsi = target.IscsiUri("x");
        string nbd = target.NbdUri("x");

        // Over iSCSI: aligned, unaligned (read-modify-write of 512-byte blocks by QEMU), large (R2T), zeroes and discard.
        await QemuIoAsync(iscsi, ["write -P 0x5a 0 1M", "write -P 0x6b 1M 3M", "write -P 0x11 8389120 1536", "write -z 2M 512k", "discard 3M 256k", "flush"]);
        await QemuIoAsync(nbd, ["read -P 0x5a 0 1M", "read -P 0x6b 1M 1M", "read -P 0 2M 512k", "read -P 0x6b 2560k 512k", "read -P 0 3M 256k",
            "read -P 0x6b 3328k 768k", "read -P 0x11 8389120 1536", "read -P 0 8M 512"]);

        // Over NBD, read over iSCSI.
        await QemuIoAsync(nbd, ["write -P 0x77 64M 2M", "write -P 0x78 104861696 4096", "flush"]);
        await QemuIoAsync(iscsi, ["read -P 0x77 64M 2M", "read -P 0x78 104861696 4096", "read -P 0 100M 4096"]);
    }

    private async Task QemuImgAsync(IEnumerable<string> args) => await Tool.RunCheckedAsync("qemu-img", args, Timeouts.Medium, output);

    private async Task QemuIoAsync(string url, IEnumerable<string> commands)
    {
        var args = new List<string> { "-f", "raw", url };
        foreach (string command in commands) args.AddRange(["-c", command]);
        ToolResult result = await Tool.RunCheckedAsync("qemu-io", args, Timeouts.Medium, output);
        Assert.DoesNotContain("Pattern verification failed", result.Stdout + result.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("failed", result.Stdout + result.Stderr, StringComparison.OrdinalIgnoreCase);
    }
}
