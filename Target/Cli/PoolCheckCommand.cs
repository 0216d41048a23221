using System.Diagnostics;
using Target.Dedup;

namespace Target.Cli;

/// <summary><c>target pool check</c>: runs the offline checker; progress on stderr, problems on stdout.</summary>
public static class PoolCheckCommand
{
    public static async Task<int> RunAsync(PoolCheckVerb verb, TextWriter output, TextWriter progressOutput)
    {
        if (!Directory.Exists(verb.Pool))
        {
            progressOutput.WriteLine($"target: no pool directory '{verb.Pool}'");
            return 2;
        }

        var progress = new ProgressPrinter(progressOutput);
        PoolCheckReport report;
        try
        {
            report = await PoolChecker.CheckAsync(Path.GetFullPath(verb.Pool), verb.NoDirect, progress, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is StorageException or IOException or InvalidDataException or UnauthorizedAccessException)
        {
            progress.Finish();
            progressOutput.WriteLine($"target: cannot check pool '{verb.Pool}': {e.Message}");
            return 2;
        }
        progress.Finish();

        output.WriteLine($"checked {report.VolumesChecked} volume(s), {report.ChunksChecked} chunk(s), {report.ReferencesChecked} reference(s)");
        if (report.Clean)
        {
            output.WriteLine("pool is clean");
            return 0;
        }

        output.WriteLine($"pool has {report.Problems.Count} problem(s):");
        foreach (string problem in report.Problems)
            output.WriteLine($"  {problem}");
        return 1;
    }

    /// <summary>Synchronous progress (Progress&lt;T&gt; would post to the thread pool), printed at most every 200 ms per phase.</summary>
    private sealed class ProgressPrinter(TextWriter output) : IProgress<PoolCheckProgress>
    {
        private readonly object _lock = new();
        private readonly Stopwatch _sincePrint = Stopwatch.StartNew();
        private string? _phase;
        private bool _open;

        public void Report(PoolCheckProgress value)
        {
            lock (_lock)
            {
                bool newPhase = value.Phase != _phase;
                bool done = value.Total > 0 && value.Done >= value.Total;
                if (!newPhase && !done && _sincePrint.ElapsedMilliseconds < 200)
                    return;
                if (newPhase && _open)
                    output.WriteLine();
                _phase = value.Phase;
                _sincePrint.Restart();
                string percent = value.Total > 0 ? $" {100.0 * value.Done / value.Total,5:0.0}%" : "";
                output.Write($"\r{value.Phase}: {value.Done}/{value.Total}{percent}   ");
                _open = true;
            }
        }

        public void Finish()
        {
            lock (_lock)
            {
                if (_open)
                    output.WriteLine();
                _open = false;
            }
        }
    }
}
