// What a checkpoint tells the log at debug level: why it ran, and what its journal flush and its
// write cost apart (on a disk that stalls writes while it flushes, the flush is what a checkpoint
// costs a stream). Invariant: every checkpoint logs one such line, with its sequence number.
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Target.Dedup;
using Target.Tests.Nbd;
using Xunit.Abstractions;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Engine;

public sealed partial class CheckpointLogTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [GeneratedRegex(@"^checkpoint (\d+) \((open|requested|space|journal size)\): journal flush (\d+\.\d) ms, checkpoint write (\d+\.\d) ms; \d+ segments quarantined, \d+ free$")]
    private static partial Regex CheckpointLine();

    [Fact]
    public async Task EachCheckpointLogsItsReasonAndTheCostOfItsFlushAndItsWrite()
    {
        using var dir = new TempPoolDir();
        var logs = new CollectingLoggerFactory(output);
        PoolOptions options = Options(dir.Path) with { LoggerFactory = logs };
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 1 << 20, 512, None);
            for (long b = 0; b < 32; b++) await WriteAsync(v, b * Chunk, Pattern(b, 1));
            await pool.CheckpointAsync(None);
        }
        List<Match> lines = logs.Logger.Lines
            .Where(l => l.Level == LogLevel.Debug)
            .Select(l => CheckpointLine().Match(l.Message))
            .Where(m => m.Success)
            .ToList();
        // The new pool's first checkpoint, then the one asked for (closing may add more).
        Assert.True(lines.Count >= 2, $"{lines.Count} checkpoint lines: {string.Join(" | ", logs.Logger.Lines.Select(l => l.Message))}");
        Assert.Equal(("1", "open"), (lines[0].Groups[1].Value, lines[0].Groups[2].Value));
        Assert.Equal(("2", "requested"), (lines[1].Groups[1].Value, lines[1].Groups[2].Value));
    }

    private sealed class CollectingLoggerFactory(ITestOutputHelper output) : ILoggerFactory
    {
        public CollectingLogger<Pool> Logger { get; } = new(output);

        public ILogger CreateLogger(string categoryName) => Logger;

        public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

        public void Dispose()
        {
        }
    }
}
