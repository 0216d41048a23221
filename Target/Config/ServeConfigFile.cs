using System.Text.Json;
using System.Text.Json.Serialization;
using Target.Cli;

namespace Target.Config;

/// <summary>
/// The JSON form of <c>target serve</c>'s settings (--config FILE). Keys are camelCase and match the
/// long options: pool, poolSize, volumes, nbd, nbdSocket, admin, noDirect, writeMode, cache, readCache, device, fillWarnings, logLevel,
/// iscsi, iscsiPortal, iscsiAbortWaitMs, plus iscsiChap / iscsiDiscoveryChap / iscsiInitiators (config file only: secrets stay off the command line).
/// Sizes are numbers of bytes or strings with K/M/G/T suffixes; volumes are "NAME:SIZE" strings or
/// {"name", "size", "logicalBlockSize"} objects. Unknown keys are an error (typos should not pass silently).
/// </summary>
public sealed class ServeConfigFile
{
    public string? Pool { get; set; }

    [JsonConverter(typeof(SizeJsonConverter))]
    public long? PoolSize { get; set; }

    public List<VolumeSpec>? Volumes { get; set; }

    public string? Nbd { get; set; }

    public string? NbdSocket { get; set; }

    public string? Admin { get; set; }

    public bool? NoDirect { get; set; }

    public string? WriteMode { get; set; }

    public int? JournalFlushMs { get; set; }

    [JsonConverter(typeof(SizeJsonConverter))]
    public long? Cache { get; set; }

    [JsonConverter(typeof(SizeJsonConverter))]
    public long? ReadCache { get; set; }

    public string? Device { get; set; }

    public int[]? FillWarnings { get; set; }

    public string? LogLevel { get; set; }

    /// <summary>iSCSI listener "HOST:PORT" or "off" (default off).</summary>
    public string? Iscsi { get; set; }

    /// <summary>Portal "HOST:PORT" that iSCSI discovery advertises (default: the address the initiator connected to).</summary>
    public string? IscsiPortal { get; set; }

    /// <summary>Bound on the waits of task management, PREEMPT AND ABORT, logout and close for commands still running, in ms.</summary>
    public int? IscsiAbortWaitMs { get; set; }

    /// <summary>CHAP secrets per volume name ("*" for all volumes).</summary>
    public Dictionary<string, ChapConfig>? IscsiChap { get; set; }

    /// <summary>CHAP secrets required for iSCSI discovery sessions.</summary>
    public ChapConfig? IscsiDiscoveryChap { get; set; }

    /// <summary>Initiator names allowed per volume name ("*" for all volumes).</summary>
    public Dictionary<string, List<string>>? IscsiInitiators { get; set; }

    internal static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web)
    {
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        Converters = { new VolumeSpecJsonConverter() },
    };

    public static ServeConfigFile Parse(string json)
    {
        try
        {
            return JsonSerializer.Deserialize<ServeConfigFile>(json, JsonOptions) ?? new ServeConfigFile();
        }
        catch (JsonException e)
        {
            throw new FormatException($"bad configuration: {e.Message}", e);
        }
    }

    public static ServeConfigFile Load(string path)
    {
        string json;
        try
        {
            json = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FormatException($"cannot read configuration file '{path}': {e.Message}", e);
        }
        try
        {
            return Parse(json);
        }
        catch (FormatException e)
        {
            throw new FormatException($"{path}: {e.Message}", e);
        }
    }
}

internal sealed class SizeJsonConverter : JsonConverter<long?>
{
    public override bool HandleNull => true;

    public override long? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null:
                return null;
            case JsonTokenType.Number:
                return reader.GetInt64();
            case JsonTokenType.String:
                if (SizeParser.TryParse(reader.GetString(), out long bytes, out string? error))
                    return bytes;
                throw new JsonException(error);
            default:
                throw new JsonException($"a size must be a number or a string like \"4G\", not {reader.TokenType}");
        }
    }

    public override void Write(Utf8JsonWriter writer, long? value, JsonSerializerOptions options)
    {
        if (value is null) writer.WriteNullValue();
        else writer.WriteNumberValue(value.Value);
    }
}

internal sealed class VolumeSpecJsonConverter : JsonConverter<VolumeSpec>
{
    public override VolumeSpec Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String)
        {
            if (VolumeSpec.TryParse(reader.GetString(), out VolumeSpec? spec, out string? error))
                return spec;
            throw new JsonException(error);
        }

        if (reader.TokenType != JsonTokenType.StartObject)
            throw new JsonException("a volume must be \"NAME:SIZE\" or {\"name\": ..., \"size\": ...}");

        string? name = null;
        long? sizeBytes = null;
        int blockBytes = VolumeSpec.DefaultLogicalBlockSize;
        var sizeConverter = new SizeJsonConverter();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            if (reader.TokenType != JsonTokenType.PropertyName)
                throw new JsonException("bad volume object");
            string property = reader.GetString()!;
            reader.Read();
            switch (property.ToLowerInvariant())
            {
                case "name":
                    name = reader.GetString();
                    break;
                case "size":
                case "sizebytes":
                    sizeBytes = sizeConverter.Read(ref reader, typeof(long?), options);
                    break;
                case "logicalblocksize":
                case "blocksize":
                    blockBytes = reader.GetInt32();
                    break;
                default:
                    throw new JsonException($"unknown volume key '{property}'");
            }
        }

        if (sizeBytes is null)
            throw new JsonException($"volume '{name}' has no size");
        if (VolumeSpec.TryCreate(name, sizeBytes.Value, blockBytes, out VolumeSpec? result, out string? createError))
            return result;
        throw new JsonException(createError);
    }

    public override void Write(Utf8JsonWriter writer, VolumeSpec value, JsonSerializerOptions options) =>
        writer.WriteStringValue(value.ToString());
}
