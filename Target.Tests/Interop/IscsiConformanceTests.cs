// libiscsi's conformance suite run the way storage vendors run it: `iscsi-test-cu --dataloss`,
// every test, against a real `target serve` on a fresh pool, with a second (multipath) URL so
// the MultipathIO tests run too. The CUnit summary is parsed; the test fails when the number of
// passed tests drops below a recorded floor, or when any test fails that is not in the list of
// known failures below (each with its reason).
//
// Reference, same machine and libiscsi 1.19: tgt 1.0.85 with a file backing store passes 598 of
// 615 and fails GetLBAStatus.BeyondEol, PrinServiceactionRange.Range, ProutReserve.Ownership{EA,
// EARO,WE,WERO}, Reserve6.2Initiators and iSCSIdatasn.iSCSIDataSnInvalid; Target passes all of those.
// (CUnit counts a test that skips itself, e.g. SANITIZE without --allow-sanitize, as passed.)
// One run takes about a minute on the 2-core CI machines.
using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed partial class IscsiConformanceTests(ITestOutputHelper output)
{
    /// <summary>Passed tests (of 615) on a 512-byte-block volume; measured 612. A drop fails the test.</summary>
    public const int PassedFloor = 612;

    /// <summary>What tgt 1.0.85 (file backing store) passes in the same suite, for comparison.</summary>
    public const int TgtPassed = 598;

    /// <summary>The suite's test count with libiscsi 1.19 (every test of the ALL, SCSI, iSCSI and LINUX families).</summary>
    public const int TestsExpected = 615;

    /// <summary>The whole suite must finish within this (it takes about a minute).</summary>
    private static readonly TimeSpan s_suiteTimeout = TimeSpan.FromMinutes(10);

    /// <summary>Tests known to fail on Target ("Suite.Test", as CUnit names them), each with its reason.</summary>
    public static readonly IReadOnlyDictionary<string, string> KnownFailures = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["GetLBAStatus.UnmapSingle"] =
            "test bug with 8 logical blocks per physical block (512-byte volume): asks for LBA i+1 and expects the first descriptor at i+8; "
            + "SBC-4 requires it at the LBA asked for. Passes on a 4096-byte volume (checked by the second run below).",
    };

    [Fact]
    public async Task Libiscsi_conformance_suite_passes_at_least_the_floor_and_only_known_failures_fail()
    {
        Tool.Require("iscsi-test-cu");
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions
        {
            PoolSize = "3G",
            Volumes = ["vol0:1G", "v4k:1G:4096"],
        });
        string url = target.IscsiUri("vol0");

        var clock = Stopwatch.StartNew();
        ToolResult run = await Tool.RunAsync("iscsi-test-cu",
            ["--dataloss", "--normal", "-i", InitiatorName(1), "-I", InitiatorName(2), url, url], s_suiteTimeout, output);
        TimeSpan elapsed = clock.Elapsed;
        CunitSummary summary = ParseSummary(run.Stdout + run.Stderr);
        output.WriteLine($"iscsi-test-cu on a 512-byte volume: {summary.TestsRan} ran, {summary.TestsPassed} passed, {summary.TestsFailed} failed "
            + $"(asserts: {summary.AssertsRan} ran, {summary.AssertsFailed} failed) in {elapsed.TotalSeconds:F0} s; floor {PassedFloor}, tgt {TgtPassed}");
        foreach (string failed in summary.FailedTests)
            output.WriteLine($"  failed: {failed}{(KnownFailures.TryGetValue(failed, out string? why) ? " (known: " + why + ")" : " (NEW)")}");

        Assert.True(summary.Found, $"no CUnit run summary in the output of iscsi-test-cu (exit {run.ExitCode}):\n{Tail(run.Stdout + run.Stderr, 4000)}");
        Assert.Equal(TestsExpected, summary.TestsRan);
        string[] unexpected = summary.FailedTests.Where(name => !KnownFailures.ContainsKey(name)).ToArray();
        Assert.True(unexpected.Length == 0, $"tests failed that are not known failures: {string.Join(", ", unexpected)}\n{FailureDetails(run.Stdout, unexpected)}");
        Assert.True(summary.TestsPassed >= PassedFloor, $"{summary.TestsPassed} tests passed, below the floor of {PassedFloor}");

        // The known failure above is a test bug at 8 blocks per physical block; on a 4096-byte volume
        // (one block per physical block) the same suite must pass.
        ToolResult lbaStatus = await Tool.RunAsync("iscsi-test-cu",
            ["--dataloss", "--normal", "-i", InitiatorName(1), "-t", "ALL.GetLBAStatus", target.IscsiUri("v4k")], Timeouts.Medium, output);
        CunitSummary lba = ParseSummary(lbaStatus.Stdout + lbaStatus.Stderr);
        output.WriteLine($"iscsi-test-cu -t ALL.GetLBAStatus on a 4096-byte volume: {lba.TestsRan} ran, {lba.TestsPassed} passed, {lba.TestsFailed} failed");
        Assert.True(lba.Found && lba.TestsRan >= 3 && lba.TestsFailed == 0,
            $"GET LBA STATUS tests on a 4096-byte volume:\n{Tail(lbaStatus.Stdout + lbaStatus.Stderr, 4000)}");
    }

    [Fact]
    public void Summary_parser_reads_cunit_counts_and_failed_test_names()
    {
        const string sample = """
                Suite CompareAndWrite, Test Simple had failures:
                    1. test_compareandwrite_simple.c:71  - CU_ASSERT_EQUAL(_r,0)    [SKIPPED] x
                Suite iSCSIResiduals, Test Write10Residuals had failures:
                Suite CompareAndWrite, Test Simple had failures:

            Run Summary:    Type  Total    Ran Passed Failed Inactive
                          suites    134    134    n/a      0        0
                           tests    615    615    577     38        0
                         asserts 178156 178156 177908    248      n/a
            """;
        CunitSummary summary = ParseSummary(sample);
        Assert.True(summary.Found);
        Assert.Equal(615, summary.TestsRan);
        Assert.Equal(577, summary.TestsPassed);
        Assert.Equal(38, summary.TestsFailed);
        Assert.Equal(178156, summary.AssertsRan);
        Assert.Equal(248, summary.AssertsFailed);
        Assert.Equal(["CompareAndWrite.Simple", "iSCSIResiduals.Write10Residuals"], summary.FailedTests);
    }

    [Fact]
    public void Known_failures_each_have_a_reason_and_the_floor_beats_tgt()
    {
        foreach ((string name, string reason) in KnownFailures)
        {
            Assert.Matches(@"^[A-Za-z0-9]+\.[A-Za-z0-9]+$", name);
            Assert.False(string.IsNullOrWhiteSpace(reason));
        }
        Assert.True(PassedFloor >= TgtPassed);
        Assert.True(PassedFloor + KnownFailures.Count <= TestsExpected);
    }

    private static string InitiatorName(int index) => $"iqn.2026-11.io.target.test:conformance-{index}";

    public sealed record CunitSummary(bool Found, long TestsRan, long TestsPassed, long TestsFailed, long AssertsRan, long AssertsFailed, IReadOnlyList<string> FailedTests);

    /// <summary>Reads CUnit's "Run Summary" table and the "Suite S, Test T had failures:" lines (distinct, in order).</summary>
    public static CunitSummary ParseSummary(string text)
    {
        Match tests = TestsLine().Match(text);
        Match asserts = AssertsLine().Match(text);
        var failed = new List<string>();
        foreach (Match match in FailureLine().Matches(text))
        {
            string name = match.Groups[1].Value + "." + match.Groups[2].Value;
            if (!failed.Contains(name)) failed.Add(name);
        }
        if (!tests.Success)
            return new CunitSummary(false, 0, 0, 0, 0, 0, failed);
        return new CunitSummary(true,
            long.Parse(tests.Groups[2].Value), long.Parse(tests.Groups[3].Value), long.Parse(tests.Groups[4].Value),
            asserts.Success ? long.Parse(asserts.Groups[2].Value) : 0, asserts.Success ? long.Parse(asserts.Groups[4].Value) : 0,
            failed);
    }

    /// <summary>The lines following each "had failures" header of the named tests (for the assertion message).</summary>
    private static string FailureDetails(string text, IReadOnlyCollection<string> names)
    {
        var lines = text.Split('\n');
        var details = new List<string>();
        for (int i = 0; i < lines.Length && details.Count < 200; i++)
        {
            Match match = FailureLine().Match(lines[i]);
            if (!match.Success || !names.Contains(match.Groups[1].Value + "." + match.Groups[2].Value)) continue;
            for (int j = Math.Max(0, i - 6); j < Math.Min(lines.Length, i + 6); j++) details.Add(lines[j]);
        }
        return string.Join('\n', details);
    }

    private static string Tail(string text, int chars) => text.Length <= chars ? text : text[^chars..];

    [GeneratedRegex(@"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", RegexOptions.Multiline)]
    private static partial Regex TestsLine();

    [GeneratedRegex(@"^\s*asserts\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s*$", RegexOptions.Multiline)]
    private static partial Regex AssertsLine();

    [GeneratedRegex(@"Suite (\S+), Test (\S+) had failures:")]
    private static partial Regex FailureLine();
}
