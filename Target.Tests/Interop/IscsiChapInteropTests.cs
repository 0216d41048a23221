// CHAP against real initiators: a `target serve` whose configuration file gives vol0 a CHAP
// secret; libiscsi's iscsi-inq and iscsi-ls log in with the right secret and are refused with a
// wrong one (or none), while a volume without CHAP stays open.
using System.Text.Json;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class IscsiChapInteropTests(ITestOutputHelper output)
{
    private const string User = "alice";
    private const string Secret = "correct-horse-battery";

    private async Task<(TargetProcess Target, TempDirectory Config)> StartAsync()
    {
        var config = new TempDirectory("target-chap-");
        string path = config["serve.json"];
        File.WriteAllText(path, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["iscsiChap"] = new Dictionary<string, object> { ["vol0"] = new Dictionary<string, string> { ["user"] = User, ["secret"] = Secret } },
        }));
        TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions
        {
            Volumes = ["vol0:64M", "open:64M"],
            ExtraArgs = ["--config", path],
        });
        return (target, config);
    }

    private static string WithCredentials(string url, string user, string secret) =>
        url.Replace("iscsi://", $"iscsi://{user}%{secret}@", StringComparison.Ordinal);

    [Fact]
    public async Task Right_secret_logs_in_with_iscsi_inq_and_iscsi_ls()
    {
        (TargetProcess target, TempDirectory config) = await StartAsync();
        await using (target)
        using (config)
        {
            ToolResult inq = await Tool.RunCheckedAsync("iscsi-inq", [WithCredentials(target.IscsiUri("vol0"), User, Secret)], Timeouts.Short, output);
            Assert.Contains("Vendor:TARGET", inq.Stdout, StringComparison.Ordinal);

            ToolResult list = await Tool.RunCheckedAsync("iscsi-ls", ["-s", $"iscsi://{User}%{Secret}@{target.IscsiEndPoint}"], Timeouts.Short, output);
            Assert.Contains(TargetProcess.IscsiTargetName("vol0"), list.Stdout, StringComparison.Ordinal);
            Assert.Contains("Lun:0", list.Stdout, StringComparison.Ordinal);

            ToolResult open = await Tool.RunCheckedAsync("iscsi-inq", [target.IscsiUri("open")], Timeouts.Short, output);
            Assert.Contains("Vendor:TARGET", open.Stdout, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Wrong_or_missing_secret_is_refused()
    {
        (TargetProcess target, TempDirectory config) = await StartAsync();
        await using (target)
        using (config)
        {
            ToolResult wrong = await Tool.RunAsync("iscsi-inq", [WithCredentials(target.IscsiUri("vol0"), User, "not-the-right-secret")], Timeouts.Short, output);
            Assert.NotEqual(0, wrong.ExitCode);
            Assert.DoesNotContain("Vendor:TARGET", wrong.Stdout, StringComparison.Ordinal);

            ToolResult wrongUser = await Tool.RunAsync("iscsi-inq", [WithCredentials(target.IscsiUri("vol0"), "mallory", Secret)], Timeouts.Short, output);
            Assert.NotEqual(0, wrongUser.ExitCode);

            ToolResult none = await Tool.RunAsync("iscsi-inq", [target.IscsiUri("vol0")], Timeouts.Short, output);
            Assert.NotEqual(0, none.ExitCode);
            Assert.DoesNotContain("Vendor:TARGET", none.Stdout, StringComparison.Ordinal);

            Assert.Contains("login refused", target.Log, StringComparison.Ordinal);

            // The refusals left the target serving: the right secret still logs in.
            await Tool.RunCheckedAsync("iscsi-inq", [WithCredentials(target.IscsiUri("vol0"), User, Secret)], Timeouts.Short, output);
        }
    }
}
