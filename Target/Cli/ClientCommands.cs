using System.Globalization;
using System.Text;
using System.Text.Json;
using Target.Config;

namespace Target.Cli;

/// <summary>The verbs that talk to a running server: stats, volume create/list/delete/resize.</summary>
public static class ClientCommands
{
    private static readonly JsonSerializerOptions s_indented = new() { WriteIndented = true };

    public static Task<int> StatsAsync(StatsVerb verb, TextWriter output) => RunAsync(verb.Admin, async client =>
    {
        using JsonDocument stats = await client.GetAsync("api/stats", CancellationToken.None).ConfigureAwait(false);
        output.WriteLine(verb.Json ? JsonSerializer.Serialize(stats.RootElement, s_indented) : FormatStats(stats.RootElement));
        return 0;
    });

    public static Task<int> VolumeCreateAsync(VolumeCreateVerb verb, TextWriter output) => RunAsync(verb.Admin, async client =>
    {
        long sizeBytes = SizeParser.Parse(verb.Size);
        if (!VolumeSpec.TryCreate(verb.Name, sizeBytes, verb.BlockSize, out VolumeSpec? spec, out string? error))
            throw new FormatException(error);
        using JsonDocument created = await client.PostAsync("api/volumes",
            new { spec.Name, SizeBytes = spec.SizeBytes, spec.LogicalBlockSize }, CancellationToken.None).ConfigureAwait(false);
        output.WriteLine($"created volume {spec.Name} ({SizeParser.Format(spec.SizeBytes)})");
        return 0;
    });

    public static Task<int> VolumeListAsync(VolumeListVerb verb, TextWriter output) => RunAsync(verb.Admin, async client =>
    {
        using JsonDocument volumes = await client.GetAsync("api/volumes", CancellationToken.None).ConfigureAwait(false);
        output.WriteLine(verb.Json ? JsonSerializer.Serialize(volumes.RootElement, s_indented) : FormatVolumes(volumes.RootElement));
        return 0;
    });

    public static Task<int> VolumeDeleteAsync(VolumeDeleteVerb verb, TextWriter output) => RunAsync(verb.Admin, async client =>
    {
        using JsonDocument _ = await client.DeleteAsync($"api/volumes/{Uri.EscapeDataString(verb.Name)}", CancellationToken.None).ConfigureAwait(false);
        output.WriteLine($"deleted volume {verb.Name}");
        return 0;
    });

    public static Task<int> VolumeResizeAsync(VolumeResizeVerb verb, TextWriter output) => RunAsync(verb.Admin, async client =>
    {
        long sizeBytes = SizeParser.Parse(verb.Size);
        using JsonDocument _ = await client.PostAsync($"api/volumes/{Uri.EscapeDataString(verb.Name)}/resize",
            new { SizeBytes = sizeBytes }, CancellationToken.None).ConfigureAwait(false);
        output.WriteLine($"resized volume {verb.Name} to {SizeParser.Format(sizeBytes)}");
        return 0;
    });

    private static async Task<int> RunAsync(string admin, Func<AdminClient, Task<int>> action)
    {
        try
        {
            using var client = new AdminClient(admin);
            return await action(client).ConfigureAwait(false);
        }
        catch (FormatException e)
        {
            Console.Error.WriteLine($"target: {e.Message}");
            return 2;
        }
        catch (AdminClientException e)
        {
            Console.Error.WriteLine($"target: {e.Message}");
            return e.Unreachable ? 3 : 1;
        }
    }

    internal static string FormatStats(JsonElement s)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"pool {Str(s, "uuid")}  fingerprint {Str(s, "fingerprint")}");
        text.AppendLine(CultureInfo.InvariantCulture, $"  capacity        {Human(s, "capacityBytes"),12}   free {Human(s, "freeBytes")}");
        text.AppendLine(CultureInfo.InvariantCulture, $"  physical        {Human(s, "physicalBytes"),12}   logical {Human(s, "logicalBytes")}   dedup {Num(s, "dedupRatio"):0.00}x");
        text.AppendLine(CultureInfo.InvariantCulture, $"  unique chunks   {Long(s, "uniqueChunks"),12}   zero chunks {Long(s, "zeroChunks")}");
        text.AppendLine(CultureInfo.InvariantCulture, $"  RAM             {Human(s, "ramBytesIndex"),12} index, {Human(s, "ramBytesChunkTable")} chunk table, {Human(s, "ramBytesMaps")} maps");
        text.AppendLine(CultureInfo.InvariantCulture, $"  RAM per chunk   {Num(s, "ramBytesPerUniqueChunk"),12:0.0} B unique, {Num(s, "ramBytesPerMappedBlock"):0.0} B per mapped block");
        text.AppendLine(CultureInfo.InvariantCulture, $"  journal         {Human(s, "journalBytes"),12} since checkpoint   segments {Long(s, "segmentsFree")}/{Long(s, "segmentsTotal")} free");
        text.AppendLine(CultureInfo.InvariantCulture, $"  written         {Human(s, "hostBytesWritten"),12} by hosts, {Human(s, "deviceBytesWritten")} to devices   write amplification {Num(s, "writeAmplification"):0.00}");
        text.AppendLine(CultureInfo.InvariantCulture, $"  garbage         {Human(s, "deadBytes"),12} reclaimable   cleaner moved {Human(s, "gcBytesMoved")} from {Long(s, "gcSegmentsCleaned")} segment(s)");
        if (s.TryGetProperty("volumes", out JsonElement volumes))
            text.Append(FormatVolumes(volumes));
        return text.ToString().TrimEnd();
    }

    internal static string FormatVolumes(JsonElement volumes)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"{"VOLUME",-20} {"SIZE",10} {"MAPPED",12} {"DIRTY",12} {"BLOCK",6} {"MODE",8}");
        if (volumes.ValueKind == JsonValueKind.Array)
        {
            foreach (JsonElement v in volumes.EnumerateArray())
            {
                text.AppendLine(CultureInfo.InvariantCulture,
                    $"{Str(v, "name"),-20} {SizeParser.Format(Long(v, "sizeBytes")),10} {Human(v, "mappedBytes"),12} {Human(v, "dirtyBytes"),12} {Long(v, "logicalBlockSize"),6} {Str(v, "writeMode"),8}");
            }
        }
        return text.ToString().TrimEnd();
    }

    private static string Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out JsonElement v) ? v.ToString() : "?";

    private static long Long(JsonElement e, string name) =>
        e.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long l) ? l : 0;

    private static double Num(JsonElement e, string name) =>
        e.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : double.NaN;

    private static string Human(JsonElement e, string name) => SizeParser.Human(Long(e, name));
}
