using System.Text.Json;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>fio's nbd engine: random writes of mixed sizes, then a crc32c verify pass over everything written.</summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class FioTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("randwrite", "4k", 16)]
    [InlineData("randwrite", "4k-128k", 8)]
    public async Task Fio_nbd_random_writes_verify_with_crc32c(string rw, string blockSizes, int iodepth)
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:1G"] });

        ToolResult fio = await Tool.RunAsync("fio",
        [
            "--name=verify",
            "--ioengine=nbd",
            $"--uri={target.NbdUri()}",
            $"--rw={rw}",
            blockSizes.Contains('-') ? $"--bsrange={blockSizes}" : $"--bs={blockSizes}",
            $"--iodepth={iodepth}",
            "--size=64M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randseed=4242",
            "--runtime=120",
            "--output-format=json",
        ], Timeouts.Long, output);
        output.WriteLine(fio.Stdout);
        fio.AssertSuccess();

        JsonElement job = JsonDocument.Parse(JsonStart(fio.Stdout)).RootElement.GetProperty("jobs")[0];
        Assert.Equal(0, job.GetProperty("error").GetInt32());
        Assert.True(job.GetProperty("write").GetProperty("io_bytes").GetInt64() > 0, "fio wrote nothing");
        Assert.True(job.GetProperty("read").GetProperty("io_bytes").GetInt64() > 0, "fio verified nothing");
    }

    /// <summary>fio may print notes before its JSON.</summary>
    private static string JsonStart(string text)
    {
        int brace = text.IndexOf('{', StringComparison.Ordinal);
        return brace < 0 ? text : text[brace..];
    }
}
