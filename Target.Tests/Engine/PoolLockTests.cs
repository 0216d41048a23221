// The pool lock across close and reopen. Invariant: a pool closed by this process can be opened
// again at once, even while another thread starts processes (each child holds a copy of the
// lock's descriptor from its fork until its exec, so the lock looks held for a moment); a pool
// open elsewhere is still refused (PoolVolumeTests.ASecondOpenOfTheSamePoolFails).
using System.Diagnostics;
using Target.Dedup;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Engine;

public sealed class PoolLockTests(ITestOutputHelper output)
{
    [Fact]
    public async Task APoolClosedWhileTheProcessStartsChildrenOpensAgain()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path);
        await Pool.Open(options).DisposeAsync();
        using var stop = new CancellationTokenSource();
        int started = 0;
        Task spawner = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                using Process child = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
                child.WaitForExit();
                started++;
            }
        });
        var refused = new List<string>();
        const int reopens = 100;
        for (int i = 0; i < reopens; i++)
        {
            try
            {
                await Pool.Open(options with { CreateSizeBytes = null }).DisposeAsync();
            }
            catch (IOException e)
            {
                refused.Add(e.Message);
            }
        }
        stop.Cancel();
        await spawner;
        output.WriteLine($"{reopens} close-then-open pairs beside {started} child processes: {refused.Count} refused");
        Assert.True(started > 0, "no child process was started beside the reopens");
        Assert.True(refused.Count == 0, $"{refused.Count} of {reopens} reopens refused: {refused.FirstOrDefault()}");
    }
}
