using System.Net;
using Microsoft.Extensions.Logging;
using Target.Cli;
using Target.Dedup;

namespace Target.Config;

/// <summary>The resolved settings of <c>target serve</c>: command line over config file over defaults.</summary>
public sealed record ServeSettings
{
    public const long DefaultPoolSizeBytes = 4L << 30;
    public const long DefaultCacheBytes = 256L << 20;
    public const string DefaultNbd = "127.0.0.1:10809";
    public const string DefaultAdmin = "127.0.0.1:9810";

    public required string PoolDirectory { get; init; }
    public long PoolSizeBytes { get; init; } = DefaultPoolSizeBytes;

    /// <summary>A block device (or file) for the pool's data, used when the pool is created.</summary>
    public string? Device { get; init; }

    public int[] FillWarningPercents { get; init; } = [80, 90, 95];
    public IReadOnlyList<VolumeSpec> Volumes { get; init; } = [];

    /// <summary>Null: no NBD TCP listener.</summary>
    public IPEndPoint? Nbd { get; init; }
    public string? NbdSocket { get; init; }

    /// <summary>Null: no admin HTTP listener.</summary>
    public IPEndPoint? Admin { get; init; }
    public bool NoDirect { get; init; }
    public WriteMode WriteMode { get; init; } = WriteMode.OneWayWriteBack;
    public long CacheBytes { get; init; } = DefaultCacheBytes;
    public int JournalFlushMs { get; init; } = PoolOptions.DefaultJournalFlushMs;

    /// <summary>
    /// The read cache when none is configured: an eighth of the memory this process may use (the
    /// machine's, or its cgroup's limit), whole MiB, at least 256 MiB. A fixed 1 GiB left a 1 GiB
    /// working set a fifth uncached on a 24 GiB machine (random reads at 0.81x nbdkit memory,
    /// 1.1x with 3 GiB; docs/PERFORMANCE.md). The slab is reserved, not touched: memory is used
    /// only as chunks are cached.
    /// </summary>
    public static long DefaultReadCacheBytes => DefaultReadCacheFor(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);

    internal static long DefaultReadCacheFor(long memoryBytes) => Math.Max(MinDefaultReadCacheBytes, memoryBytes / 8 & ~((1L << 20) - 1));

    internal const long MinDefaultReadCacheBytes = 256L << 20;

    public long ReadCacheBytes { get; init; } = DefaultReadCacheBytes;
    public LogLevel LogLevel { get; init; } = LogLevel.Information;

    /// <summary>Null: no iSCSI listener (the default; `make run` passes --iscsi 127.0.0.1:3260).</summary>
    public IPEndPoint? Iscsi { get; init; }

    public IscsiSettings IscsiOptions { get; init; } = new();

    /// <summary>Merges the command line with the config file it names (if any). Throws FormatException on bad input.</summary>
    public static ServeSettings Resolve(ServeVerb cli)
    {
        ServeConfigFile file = cli.Config is null ? new ServeConfigFile() : ServeConfigFile.Load(cli.Config);
        return Resolve(cli, file);
    }

    public static ServeSettings Resolve(ServeVerb cli, ServeConfigFile file)
    {
        string pool = cli.Pool ?? file.Pool
            ?? throw new FormatException("no pool directory: give --pool DIR or \"pool\" in the config file");

        long poolSizeBytes = cli.PoolSize is not null ? SizeParser.Parse(cli.PoolSize) : file.PoolSize ?? DefaultPoolSizeBytes;
        if (poolSizeBytes <= 0)
            throw new FormatException("pool size must be positive");

        // Config volumes first, command-line ones replace those of the same name.
        var volumes = new List<VolumeSpec>(file.Volumes ?? []);
        foreach (string text in cli.Volumes)
        {
            VolumeSpec spec = VolumeSpec.Parse(text);
            volumes.RemoveAll(v => v.Name == spec.Name);
            volumes.Add(spec);
        }
        var duplicate = volumes.GroupBy(v => v.Name).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
            throw new FormatException($"volume '{duplicate.Key}' is named twice");

        string writeModeText = cli.WriteMode ?? file.WriteMode ?? WriteModes.ToText(WriteMode.OneWayWriteBack);
        if (!WriteModes.TryParse(writeModeText, out WriteMode writeMode))
            throw new FormatException($"bad write mode '{writeModeText}' (wt or 1way-wb)");
        if (writeMode == WriteMode.WriteBack)
            throw new FormatException("write mode 'wb' needs a partner controller; a single controller uses wt or 1way-wb");

        long cacheBytes = cli.Cache is not null ? SizeParser.Parse(cli.Cache) : file.Cache ?? DefaultCacheBytes;
        if (cacheBytes <= 0)
            throw new FormatException("cache size must be positive");

        int journalFlushMs = cli.JournalFlushMs ?? file.JournalFlushMs ?? PoolOptions.DefaultJournalFlushMs;
        if (journalFlushMs < 0)
            throw new FormatException("journal flush interval must not be negative");

        long readCacheBytes = cli.ReadCache is not null ? SizeParser.Parse(cli.ReadCache) : file.ReadCache ?? DefaultReadCacheBytes;
        if (readCacheBytes < 0)
            throw new FormatException("read cache size must not be negative");

        string logLevelText = cli.LogLevel ?? file.LogLevel ?? nameof(LogLevel.Information);
        if (!Enum.TryParse(logLevelText, ignoreCase: true, out LogLevel logLevel) || !Enum.IsDefined(logLevel))
            throw new FormatException($"bad log level '{logLevelText}'");

        return new ServeSettings
        {
            PoolDirectory = Path.GetFullPath(pool),
            PoolSizeBytes = poolSizeBytes,
            Device = cli.Device ?? file.Device,
            FillWarningPercents = ParseFillWarnings(cli.FillWarnings) ?? file.FillWarnings ?? [80, 90, 95],
            Volumes = volumes,
            Nbd = ParseListener(cli.Nbd ?? file.Nbd ?? DefaultNbd, "nbd"),
            NbdSocket = cli.NbdSocket ?? file.NbdSocket,
            Admin = ParseListener(cli.Admin ?? file.Admin ?? DefaultAdmin, "admin"),
            NoDirect = cli.NoDirect || (file.NoDirect ?? false),
            WriteMode = writeMode,
            CacheBytes = cacheBytes,
            JournalFlushMs = journalFlushMs,
            ReadCacheBytes = readCacheBytes,
            LogLevel = logLevel,
            Iscsi = ParseListener(cli.Iscsi ?? file.Iscsi ?? "off", "iscsi"),
            IscsiOptions = IscsiSettings.Resolve(cli.IscsiPortal ?? file.IscsiPortal, file.IscsiChap, file.IscsiDiscoveryChap, file.IscsiInitiators,
                cli.IscsiAbortWaitMs ?? file.IscsiAbortWaitMs),
        };
    }

    private static int[]? ParseFillWarnings(string? text)
    {
        if (text is null) return null;
        var percents = new List<int>();
        foreach (string part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, out int p) || p < 1 || p > 100)
                throw new FormatException($"bad fill warning '{part}': percentages 1-100, comma-separated");
            percents.Add(p);
        }
        return percents.ToArray();
    }

    private static IPEndPoint? ParseListener(string text, string what)
    {
        if (EndpointParser.IsOff(text))
            return null;
        if (!EndpointParser.TryParse(text, out IPEndPoint? endPoint, out string? error))
            throw new FormatException($"--{what}: {error}");
        return endPoint;
    }
}
