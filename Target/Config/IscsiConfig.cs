using Target.Protocol.Iscsi;

namespace Target.Config;

/// <summary>
/// CHAP secrets in the configuration file: {"user": "...", "secret": "...", "mutualUser": "...", "mutualSecret": "..."}.
/// The mutual pair is optional (the target proves itself only when both are set and the initiator asks).
/// </summary>
public sealed class ChapConfig
{
    public string? User { get; set; }

    public string? Secret { get; set; }

    public string? MutualUser { get; set; }

    public string? MutualSecret { get; set; }

    /// <summary>RFC 7143 12.1.3: CHAP secrets should be at least 12 bytes; shorter ones are refused.</summary>
    public const int SecretBytesMin = 12;

    public IscsiChapCredentials ToCredentials(string where)
    {
        if (string.IsNullOrEmpty(User) || string.IsNullOrEmpty(Secret))
            throw new FormatException($"{where}: CHAP needs \"user\" and \"secret\"");
        if (System.Text.Encoding.UTF8.GetByteCount(Secret) < SecretBytesMin)
            throw new FormatException($"{where}: the CHAP secret must be at least {SecretBytesMin} bytes");
        bool mutualUser = !string.IsNullOrEmpty(MutualUser);
        bool mutualSecret = !string.IsNullOrEmpty(MutualSecret);
        if (mutualUser != mutualSecret)
            throw new FormatException($"{where}: mutual CHAP needs both \"mutualUser\" and \"mutualSecret\"");
        if (mutualSecret && System.Text.Encoding.UTF8.GetByteCount(MutualSecret!) < SecretBytesMin)
            throw new FormatException($"{where}: the mutual CHAP secret must be at least {SecretBytesMin} bytes");
        if (mutualSecret && MutualSecret == Secret)
            throw new FormatException($"{where}: the mutual CHAP secret must differ from the initiator's secret");
        return new IscsiChapCredentials(User, Secret, mutualUser ? MutualUser : null, mutualSecret ? MutualSecret : null);
    }
}

/// <summary>iSCSI settings resolved from the command line and the configuration file.</summary>
public sealed record IscsiSettings
{
    /// <summary>"HOST:PORT" returned as TargetAddress in discovery; null: the address the initiator connected to.</summary>
    public string? Portal { get; init; }

    /// <summary>CHAP per volume name ("*" for every volume).</summary>
    public IReadOnlyDictionary<string, IscsiChapCredentials> Chap { get; init; } = new Dictionary<string, IscsiChapCredentials>();

    public IscsiChapCredentials? DiscoveryChap { get; init; }

    /// <summary>Initiator names allowed per volume name ("*" for every volume).</summary>
    public IReadOnlyDictionary<string, IReadOnlyList<string>> Initiators { get; init; } = new Dictionary<string, IReadOnlyList<string>>();

    /// <summary>IscsiServerOptions.AbortWaitTimeout: task management, PREEMPT AND ABORT, logout and close wait at most this long for commands.</summary>
    public int AbortWaitMs { get; init; } = DefaultAbortWaitMs;

    public const int DefaultAbortWaitMs = 10_000;

    /// <summary>Longest accepted abort wait: beyond a minute every initiator has long given up and escalated.</summary>
    public const int AbortWaitMsMax = 60_000;

    public static IscsiSettings Resolve(string? portal, Dictionary<string, ChapConfig>? chap, ChapConfig? discoveryChap, Dictionary<string, List<string>>? initiators,
        int? abortWaitMs = null)
    {
        if (portal is not null && !Cli.EndpointParser.TryParse(portal, out _, out string? error))
            throw new FormatException($"--iscsi-portal: {error}");
        if (abortWaitMs is < 1 or > AbortWaitMsMax)
            throw new FormatException($"--iscsi-abort-wait-ms / iscsiAbortWaitMs: {abortWaitMs} is not between 1 and {AbortWaitMsMax} ms");
        var credentials = new Dictionary<string, IscsiChapCredentials>(StringComparer.Ordinal);
        foreach ((string volume, ChapConfig entry) in chap ?? [])
            credentials[volume] = entry.ToCredentials($"iscsiChap.{volume}");
        var allowed = new Dictionary<string, IReadOnlyList<string>>(StringComparer.Ordinal);
        foreach ((string volume, List<string> names) in initiators ?? [])
        {
            foreach (string name in names)
                if (name != IscsiServerOptions.AnyTarget && !IscsiNames.IsValidName(name))
                    throw new FormatException($"iscsiInitiators.{volume}: '{name}' is not an iSCSI name (iqn., eui. or naa.)");
            allowed[volume] = names;
        }
        return new IscsiSettings
        {
            Portal = portal,
            Chap = credentials,
            DiscoveryChap = discoveryChap?.ToCredentials("iscsiDiscoveryChap"),
            Initiators = allowed,
            AbortWaitMs = abortWaitMs ?? DefaultAbortWaitMs,
        };
    }

    public IscsiServerOptions ToServerOptions(string poolDirectory) => new()
    {
        AdvertisedAddress = Portal,
        TargetChap = Chap,
        DiscoveryChap = DiscoveryChap,
        AllowedInitiators = Initiators,
        AbortWaitTimeout = TimeSpan.FromMilliseconds(AbortWaitMs),
        StateDirectory = poolDirectory,
    };
}
