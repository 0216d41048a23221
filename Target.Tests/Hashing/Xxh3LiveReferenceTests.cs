// Re-checks XXH3-128 and the checked-in reference table against the live `xxhsum -H2` binary
// on a sample covering every length class and block boundary. xxhsum is a hard dependency
// of this test: when it is missing the test fails, it is never skipped.
using System.Diagnostics;
using Target.Dedup.Hashing;

namespace Target.Tests.Hashing;

public sealed class Xxh3LiveReferenceTests
{
    private static readonly int[] s_sampleLengths =
    [
        0, 1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 32, 33, 64, 65, 96, 97, 128, 129, 160, 239, 240, 241,
        255, 256, 257, 1023, 1024, 1025, 1087, 1088, 1089, 2048, 4095, 4096, 4097, 8192, 10240,
        65536, 100_000, 1 << 20,
    ];

    [Fact]
    public void SampleMatchesLiveXxhsum()
    {
        string? xxhsum = FindOnPath("xxhsum");
        if (xxhsum is null)
            Assert.Fail("xxhsum is not on PATH; install with: apt-get install -y xxhash");
        byte[] stream = Xxh3TestInput.Stream(s_sampleLengths.Max());
        string directory = Directory.CreateTempSubdirectory("xxh3-live-").FullName;
        try
        {
            foreach (int length in s_sampleLengths)
                File.WriteAllBytes(Path.Combine(directory, length.ToString()), stream.AsSpan(0, length).ToArray());

            Dictionary<string, string> live = RunXxhsum(xxhsum, directory, s_sampleLengths.Select(l => l.ToString()));
            string[] table = Xxh3ReferenceVectors.Sweep.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

            foreach (int length in s_sampleLengths)
            {
                string expected = live[length.ToString()];
                string actual = Xxh3TestInput.Canonical(Xxh3.Hash128(stream.AsSpan(0, length)));
                Assert.True(expected == actual, $"length {length}: xxhsum -H2 says {expected}, Xxh3.Hash128 gives {actual}");
                if (length < table.Length)
                    Assert.True(expected == table[length], $"length {length}: xxhsum -H2 says {expected}, the checked-in table says {table[length]}; rerun tools/gen-xxh3-vectors.sh");
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static Dictionary<string, string> RunXxhsum(string xxhsum, string directory, IEnumerable<string> files)
    {
        var start = new ProcessStartInfo(xxhsum)
        {
            WorkingDirectory = directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("-H2");
        foreach (string file in files)
            start.ArgumentList.Add(file);

        using Process process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {xxhsum}");
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"xxhsum -H2 exited with {process.ExitCode}: {stderr.Result}");

        var hashes = new Dictionary<string, string>();
        foreach (string line in stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            string[] parts = line.Split("  ", 2);
            Assert.True(parts.Length == 2 && parts[0].Length == 32, $"unexpected xxhsum output line: {line}");
            hashes[parts[1]] = parts[0];
        }
        return hashes;
    }

    private static string? FindOnPath(string program)
    {
        string path = Environment.GetEnvironmentVariable("PATH") ?? "";
        foreach (string directory in path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(directory, program);
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }
}
