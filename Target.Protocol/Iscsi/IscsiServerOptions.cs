// Configuration of the iSCSI server: advertised portal, authentication, access lists, timers,
// and where persistent SCSI state (reservations) is kept.
namespace Target.Protocol.Iscsi;

/// <summary>CHAP secrets: the initiator proves <see cref="UserName"/>/<see cref="Secret"/>; with the mutual pair set the target proves itself too.</summary>
public sealed record IscsiChapCredentials(string UserName, string Secret, string? MutualUserName = null, string? MutualSecret = null)
{
    public bool Mutual => !string.IsNullOrEmpty(MutualUserName) && !string.IsNullOrEmpty(MutualSecret);
}

public sealed class IscsiServerOptions
{
    /// <summary>Key of the entries in <see cref="TargetChap"/> and <see cref="AllowedInitiators"/> that apply to every target.</summary>
    public const string AnyTarget = "*";

    /// <summary>"HOST:PORT" returned as TargetAddress in SendTargets; null uses the address the initiator connected to.</summary>
    public string? AdvertisedAddress { get; set; }

    /// <summary>A connection that has not finished login by then is dropped.</summary>
    public TimeSpan LoginTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>After this long without receiving anything, the target sends a NOP-In ping; zero disables pings.</summary>
    public TimeSpan NopInInterval { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>A ping not answered within this time closes the connection (dead peer).</summary>
    public TimeSpan NopInTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long task management (and PERSISTENT RESERVE OUT PREEMPT AND ABORT) waits for the tasks
    /// it aborted that are still running on the logical unit; when they have not ended by then the
    /// function is answered FUNCTION REJECTED (the command: HARDWARE ERROR). Below the initiators'
    /// own task management timeouts (open-iscsi: 15 s for ABORT TASK, 30 s for resets).
    /// </summary>
    public TimeSpan AbortWaitTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>CHAP credentials per target, keyed by volume name, target name or <see cref="AnyTarget"/>. No entry: AuthMethod=None.</summary>
    public IReadOnlyDictionary<string, IscsiChapCredentials> TargetChap { get; set; } = new Dictionary<string, IscsiChapCredentials>();

    /// <summary>CHAP credentials required for discovery sessions; null allows discovery without authentication.</summary>
    public IscsiChapCredentials? DiscoveryChap { get; set; }

    /// <summary>Initiator names allowed per target (keyed like <see cref="TargetChap"/>); no entry: any initiator.</summary>
    public IReadOnlyDictionary<string, IReadOnlyList<string>> AllowedInitiators { get; set; } = new Dictionary<string, IReadOnlyList<string>>();

    /// <summary>Directory for persistent SCSI state (persistent reservations); null keeps it in memory only.</summary>
    public string? StateDirectory { get; set; }

    public IscsiChapCredentials? ChapFor(string targetName)
    {
        if (TargetChap.Count == 0) return null;
        if (TargetChap.TryGetValue(targetName, out IscsiChapCredentials? credentials)) return credentials;
        if (IscsiNames.TryGetVolumeName(targetName, out string? volume) && TargetChap.TryGetValue(volume, out credentials)) return credentials;
        return TargetChap.TryGetValue(AnyTarget, out credentials) ? credentials : null;
    }

    public bool IsInitiatorAllowed(string targetName, string initiatorName)
    {
        if (AllowedInitiators.Count == 0) return true;
        IReadOnlyList<string>? allowed = null;
        if (!AllowedInitiators.TryGetValue(targetName, out allowed)
            && !(IscsiNames.TryGetVolumeName(targetName, out string? volume) && AllowedInitiators.TryGetValue(volume, out allowed))
            && !AllowedInitiators.TryGetValue(AnyTarget, out allowed))
            return true;
        foreach (string name in allowed)
            if (name == AnyTarget || string.Equals(name, initiatorName, StringComparison.OrdinalIgnoreCase)) return true;
        return false;
    }
}
