using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text.Json;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>Interop tests start real processes and use a lot of I/O: they run one at a time, after the parallel unit tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class InteropCollection
{
    public const string Name = "Interop";
}

public static class Timeouts
{
    public static readonly TimeSpan Short = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan Medium = TimeSpan.FromSeconds(120);
    public static readonly TimeSpan Long = TimeSpan.FromSeconds(300);
}

/// <summary>A directory under /tmp deleted at dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory(string prefix = "target-test-")
    {
        Path = TargetProcess.NewTempDirectory(prefix);
    }

    public string Path { get; }

    public string this[string name] => System.IO.Path.Combine(Path, name);

    public void Dispose() => TargetProcess.DeleteDirectory(Path);
}

public static class TestData
{
    /// <summary>Deterministic pseudo-random bytes; the seed is printed so a failure can be replayed.</summary>
    public static byte[] Random(int seed, int length, ITestOutputHelper? output = null)
    {
        Tool.Log(output, $"data seed {seed}, {length} bytes");
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    public static void WriteRandomFile(string path, int seed, long length, ITestOutputHelper? output = null)
    {
        Tool.Log(output, $"file {path}: seed {seed}, {length} bytes");
        var random = new Random(seed);
        byte[] block = new byte[1 << 20];
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        for (long done = 0; done < length; done += block.Length)
        {
            random.NextBytes(block);
            file.Write(block, 0, (int)Math.Min(block.Length, length - done));
        }
    }

    public static string Sha256(string path)
    {
        using FileStream file = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(file));
    }

    /// <summary>The first offset where two files differ, or -1 when equal (lengths included).</summary>
    public static long FirstDifference(string pathA, string pathB)
    {
        using FileStream a = File.OpenRead(pathA);
        using FileStream b = File.OpenRead(pathB);
        byte[] bufferA = new byte[1 << 20];
        byte[] bufferB = new byte[1 << 20];
        long offset = 0;
        while (true)
        {
            int readA = a.ReadAtLeast(bufferA, bufferA.Length, throwOnEndOfStream: false);
            int readB = b.ReadAtLeast(bufferB, bufferB.Length, throwOnEndOfStream: false);
            int common = Math.Min(readA, readB);
            int mismatch = bufferA.AsSpan(0, common).CommonPrefixLength(bufferB.AsSpan(0, common));
            if (mismatch < common)
                return offset + mismatch;
            if (readA != readB)
                return offset + common;
            if (readA == 0)
                return -1;
            offset += readA;
        }
    }

    public static long FirstDifference(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual)
    {
        int common = expected.CommonPrefixLength(actual);
        return common == expected.Length && expected.Length == actual.Length ? -1 : common;
    }
}

public static class AdminHttp
{
    public static HttpClient Client(TargetProcess target) => new() { BaseAddress = target.AdminUri, Timeout = Timeouts.Short };

    public static async Task<JsonElement> GetJsonAsync(TargetProcess target, string path)
    {
        using HttpClient http = Client(target);
        using HttpResponseMessage response = await http.GetAsync(path);
        string body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"GET {path}: {(int)response.StatusCode} {body}");
        return JsonDocument.Parse(body).RootElement.Clone();
    }

    /// <summary>Polls /api/stats until <paramref name="done"/> holds (destage may lag a flush by a moment), or returns the last stats.</summary>
    public static async Task<JsonElement> WaitForStatsAsync(TargetProcess target, Func<JsonElement, bool> done, TimeSpan timeout)
    {
        DateTime deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            JsonElement stats = await GetJsonAsync(target, "api/stats");
            if (done(stats) || DateTime.UtcNow > deadline)
                return stats;
            await Task.Delay(200);
        }
    }

    public static Task<HttpResponseMessage> PostJsonAsync(HttpClient http, string path, object body) =>
        http.PostAsJsonAsync(path, body);
}
