// Persistent reservations (SPC-4 5.9, 6.15 PERSISTENT RESERVE IN, 6.16 PERSISTENT RESERVE OUT):
// the registrations and the one reservation of the logical unit, shared by every session, kept in
// a small JSON file in the pool directory so that they survive a restart of the controller (a
// restart is treated like a controller failover, not a power loss: cluster fencing relies on it).
//
// Invariants:
// - Every change happens under _prLock and is on disk (temp file, fsync, rename, directory fsync)
//   before GOOD.
// - A PR OUT changes the state all or nothing: it runs on the live state after a snapshot
//   (BeginPrChange) and only CommitPrChange, once the save succeeded, keeps the change and posts
//   the unit attentions it queued; any other way out (an error, a failed save) puts the snapshot
//   back, so memory never differs from disk.
// - At most one reservation, of LU scope. Its holder is registered; with the all-registrants
//   types (WE-AR, EA-AR) every registrant holds it and _prHolder is null.
// - PRgeneration grows by one for each successful REGISTER, REGISTER AND IGNORE EXISTING KEY,
//   CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE (not for RESERVE and RELEASE).
// - An I_T nexus is named by its initiator port ("iqn...,i,0xISID"): registrations outlive the
//   session that made them and apply again when the same initiator port logs back in.
// - PREEMPT AND ABORT answers only after the tasks of the preempted nexuses have ended (they are
//   aborted through the transport's IScsiTaskSet, outside _prLock), so a fenced host's write that
//   was already running can never land after the preempting host saw GOOD.
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Logging;

namespace Target.Protocol.Scsi;

/// <summary>The persisted form of a logical unit's persistent reservation state.</summary>
internal sealed class ScsiPrState
{
    public uint Generation { get; set; }
    public bool Aptpl { get; set; }
    public byte Type { get; set; }
    public string? Holder { get; set; }
    public List<ScsiPrRegistration> Registrations { get; set; } = new();

    public ScsiPrState Clone()
    {
        var copy = new ScsiPrState { Generation = Generation, Aptpl = Aptpl, Type = Type, Holder = Holder };
        copy.Registrations.Capacity = Registrations.Count;
        foreach (ScsiPrRegistration registration in Registrations)
            copy.Registrations.Add(new ScsiPrRegistration { InitiatorPort = registration.InitiatorPort, Key = registration.Key });
        return copy;
    }
}

internal sealed class ScsiPrRegistration
{
    public string InitiatorPort { get; set; } = "";
    public ulong Key { get; set; }
}

[JsonSerializable(typeof(ScsiPrState))]
[JsonSourceGenerationOptions(WriteIndented = true)]
internal sealed partial class ScsiPrJsonContext : JsonSerializerContext;

public static class ScsiPrType
{
    public const byte WriteExclusive = 1;
    public const byte ExclusiveAccess = 3;
    public const byte WriteExclusiveRegistrantsOnly = 5;
    public const byte ExclusiveAccessRegistrantsOnly = 6;
    public const byte WriteExclusiveAllRegistrants = 7;
    public const byte ExclusiveAccessAllRegistrants = 8;

    public static bool IsValid(byte type) => type is 1 or 3 or 5 or 6 or 7 or 8;

    public static bool IsAllRegistrants(byte type) => type is WriteExclusiveAllRegistrants or ExclusiveAccessAllRegistrants;

    public static bool IsRegistrantsOnly(byte type) => type is WriteExclusiveRegistrantsOnly or ExclusiveAccessRegistrantsOnly;

    public static bool IsExclusiveAccess(byte type) => type is ExclusiveAccess or ExclusiveAccessRegistrantsOnly or ExclusiveAccessAllRegistrants;
}

public static class ScsiPrAction
{
    // PERSISTENT RESERVE IN
    public const byte ReadKeys = 0;
    public const byte ReadReservation = 1;
    public const byte ReportCapabilities = 2;
    public const byte ReadFullStatus = 3;

    // PERSISTENT RESERVE OUT
    public const byte Register = 0;
    public const byte Reserve = 1;
    public const byte Release = 2;
    public const byte Clear = 3;
    public const byte Preempt = 4;
    public const byte PreemptAndAbort = 5;
    public const byte RegisterAndIgnoreExistingKey = 6;
    public const byte RegisterAndMove = 7;
}

public sealed partial class ScsiLogicalUnit
{
    /// <summary>PR OUT parameter list of every service action but REGISTER AND MOVE (SPEC_I_PT is not supported).</summary>
    private const int PrOutParameterBytes = 24;

    /// <summary>Most registrations kept (each names one initiator port); more is INSUFFICIENT REGISTRATION RESOURCES.</summary>
    public const int PrRegistrationsMax = 256;

    private readonly object _prLock = new();
    private ScsiPrState _pr = new();
    private readonly string? _prPath;

    // The running PR OUT's snapshot (null when none runs or it committed) and the unit attentions
    // it will post once committed. Both under _prLock.
    private ScsiPrState? _prBefore;
    private readonly List<(string Port, ushort AscAscq)> _prAttentions = new();

    /// <summary>Reads the persisted state, if any (constructor only).</summary>
    private void LoadPersistentReservations()
    {
        if (_prPath is null || !File.Exists(_prPath)) return;
        try
        {
            ScsiPrState? state = JsonSerializer.Deserialize(File.ReadAllBytes(_prPath), ScsiPrJsonContext.Default.ScsiPrState);
            if (state is null) return;
            if (state.Type != 0 && !ScsiPrType.IsValid(state.Type)) throw new InvalidDataException($"reservation type {state.Type}");
            _pr = state;
            _logger.LogInformation("scsi {Target}: {Count} persistent reservation registration(s) restored from {Path}{Reservation}",
                TargetName, state.Registrations.Count, _prPath, state.Type == 0 ? "" : $", reservation type {state.Type}");
        }
        catch (Exception ex) when (ex is JsonException or InvalidDataException or IOException or UnauthorizedAccessException)
        {
            // Refusing to serve would be worse than forgetting: hosts re-register; the file is kept for inspection.
            _logger.LogError("scsi {Target}: persistent reservation state {Path} is unreadable ({Error}); starting with none",
                TargetName, _prPath, ex.Message);
            _pr = new ScsiPrState();
        }
    }

    /// <summary>Writes the state durably (temp file, fsync, rename, fsync of the directory). Called under _prLock.</summary>
    private void SavePersistentReservations()
    {
        if (_prPath is null) return;
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(_pr, ScsiPrJsonContext.Default.ScsiPrState);
        ScsiStateFile.Replace(_prPath, json);
    }

    /// <summary>Starts a PR OUT: snapshots the state so that <see cref="RollBackPrChange"/> can put it back. Under _prLock.</summary>
    private void BeginPrChange()
    {
        _prBefore = _pr.Clone();
        _prAttentions.Clear();
    }

    /// <summary>
    /// Saves the changed state; on success keeps it and posts the queued unit attentions. On
    /// failure puts the snapshot back, answers HARDWARE ERROR and returns false: the host was
    /// not told GOOD, and memory still matches what a restart would read. Under _prLock.
    /// </summary>
    private bool CommitPrChange(ScsiTask task)
    {
        try
        {
            SavePersistentReservations();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _logger.LogError("scsi {Target}: saving persistent reservation state to {Path} failed ({Error}); the change from {Port} is undone",
                TargetName, _prPath, ex.Message, task.Nexus.InitiatorPortName);
            RollBackPrChange();
            CheckCondition(task, SenseKey.HardwareError, Asc.InternalTargetFailure);
            return false;
        }
        _prBefore = null;
        foreach ((string port, ushort ascAscq) in _prAttentions)
            foreach (ScsiItNexus nexus in Volatile.Read(ref _nexuses))
                if (string.Equals(nexus.InitiatorPortName, port, StringComparison.OrdinalIgnoreCase)) nexus.PostUnitAttention(ascAscq);
        _prAttentions.Clear();
        return true;
    }

    /// <summary>Undoes whatever the running PR OUT changed without committing (it ends with this). Under _prLock.</summary>
    private void RollBackPrChange()
    {
        if (_prBefore is not null) _pr = _prBefore;
        _prBefore = null;
        _prAttentions.Clear();
    }

    private ScsiPrRegistration? FindRegistration(string initiatorPort)
    {
        foreach (ScsiPrRegistration registration in _pr.Registrations)
            if (string.Equals(registration.InitiatorPort, initiatorPort, StringComparison.OrdinalIgnoreCase)) return registration;
        return null;
    }

    private bool IsPrHolder(string initiatorPort)
    {
        if (_pr.Type == 0) return false;
        if (ScsiPrType.IsAllRegistrants(_pr.Type)) return FindRegistration(initiatorPort) is not null;
        return string.Equals(_pr.Holder, initiatorPort, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>True when some initiator is registered (RESERVE/RELEASE(6/10) then conflict: CRH=0).</summary>
    private bool HasRegistrations
    {
        get
        {
            lock (_prLock) return _pr.Registrations.Count > 0;
        }
    }

    /// <summary>SPC-4 5.9.1 tables: does a persistent reservation keep <paramref name="nexus"/> from this access?</summary>
    private bool PersistentReservationConflicts(ScsiItNexus nexus, ScsiAccess access)
    {
        if (access == ScsiAccess.None) return false;
        lock (_prLock)
        {
            byte type = _pr.Type;
            if (type == 0) return false;
            string port = nexus.InitiatorPortName;
            if (IsPrHolder(port)) return false;
            bool registered = FindRegistration(port) is not null;
            return type switch
            {
                ScsiPrType.WriteExclusive => access == ScsiAccess.Write,
                ScsiPrType.ExclusiveAccess => true,
                ScsiPrType.WriteExclusiveRegistrantsOnly or ScsiPrType.WriteExclusiveAllRegistrants => !registered && access == ScsiAccess.Write,
                _ => !registered,
            };
        }
    }

    /// <summary>Queues a unit attention for every nexus of <paramref name="initiatorPort"/>, posted when the running PR OUT commits.</summary>
    private void PostUnitAttentionToPort(string initiatorPort, ushort ascAscq)
    {
        Debug.Assert(_prBefore is not null, "unit attentions of persistent reservations are posted only by a PR OUT");
        _prAttentions.Add((initiatorPort, ascAscq));
    }

    private void ReservationConflict(ScsiTask task) => task.SetStatus(ScsiStatus.ReservationConflict);

    // ---- PERSISTENT RESERVE IN ----

    private void PersistentReserveIn(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if (cdb.Length < 10)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 0);
            return;
        }
        byte action = (byte)(cdb[1] & 0x1F);
        int allocation = BinaryPrimitives.ReadUInt16BigEndian(cdb.Slice(7));
        lock (_prLock)
        {
            switch (action)
            {
                case ScsiPrAction.ReadKeys:
                    {
                        int count = _pr.Registrations.Count;
                        Span<byte> data = task.AllocateDataIn(8 + 8 * count).Span;
                        BinaryPrimitives.WriteUInt32BigEndian(data, _pr.Generation);
                        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(4), (uint)(8 * count));
                        for (int i = 0; i < count; i++) BinaryPrimitives.WriteUInt64BigEndian(data.Slice(8 + 8 * i), _pr.Registrations[i].Key);
                        break;
                    }
                case ScsiPrAction.ReadReservation:
                    {
                        bool reserved = _pr.Type != 0;
                        Span<byte> data = task.AllocateDataIn(reserved ? 24 : 8).Span;
                        BinaryPrimitives.WriteUInt32BigEndian(data, _pr.Generation);
                        if (reserved)
                        {
                            BinaryPrimitives.WriteUInt32BigEndian(data.Slice(4), 16);
                            // All-registrants reservations report key 0 (SPC-4 6.15.3.3).
                            ulong key = ScsiPrType.IsAllRegistrants(_pr.Type) ? 0 : FindRegistration(_pr.Holder!)?.Key ?? 0;
                            BinaryPrimitives.WriteUInt64BigEndian(data.Slice(8), key);
                            data[21] = _pr.Type;   // scope 0 (LU_SCOPE) in the high nibble
                        }
                        break;
                    }
                case ScsiPrAction.ReportCapabilities:
                    {
                        Span<byte> data = task.AllocateDataIn(8).Span;
                        BinaryPrimitives.WriteUInt16BigEndian(data, 8);
                        data[2] = 0x04 | 0x01;                            // ATP_C (one target port), PTPL_C; CRH=0, SIP_C=0
                        data[3] = (byte)(0x80 | (_pr.Aptpl ? 0x01 : 0));  // TMV, ALLOW COMMANDS 0, PTPL_A
                        data[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;       // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
                        data[5] = 0x01;                                   // EX_AC_AR
                        break;
                    }
                case ScsiPrAction.ReadFullStatus:
                    ReadFullStatus(task);
                    break;
                default:
                    IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 4);
                    return;
            }
        }
        task.TruncateDataIn(allocation);
    }

    private void ReadFullStatus(ScsiTask task)
    {
        int total = 8;
        foreach (ScsiPrRegistration registration in _pr.Registrations) total += 24 + TransportIdBytes(registration.InitiatorPort);
        Span<byte> data = task.AllocateDataIn(total).Span;
        BinaryPrimitives.WriteUInt32BigEndian(data, _pr.Generation);
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(4), (uint)(total - 8));
        int at = 8;
        foreach (ScsiPrRegistration registration in _pr.Registrations)
        {
            Span<byte> d = data.Slice(at);
            BinaryPrimitives.WriteUInt64BigEndian(d, registration.Key);
            bool holder = IsPrHolder(registration.InitiatorPort);
            d[12] = (byte)(0x02 | (holder ? 0x01 : 0));     // ALL_TG_PT (one target port), R_HOLDER
            d[13] = holder ? _pr.Type : (byte)0;
            BinaryPrimitives.WriteUInt16BigEndian(d.Slice(18), 1);   // relative target port identifier
            int idBytes = WriteTransportId(d.Slice(24), registration.InitiatorPort);
            BinaryPrimitives.WriteUInt32BigEndian(d.Slice(20), (uint)idBytes);
            at += 24 + idBytes;
        }
    }

    /// <summary>iSCSI TransportID, format 01b (SPC-4 7.6.4.6): "NAME,i,0xISID", NUL-terminated, padded to 4 bytes (at least 20).</summary>
    private static int TransportIdBytes(string initiatorPort) => Math.Max(20, 4 + ((Encoding.UTF8.GetByteCount(initiatorPort) + 1 + 3) & ~3));

    private static int WriteTransportId(Span<byte> destination, string initiatorPort)
    {
        int bytes = TransportIdBytes(initiatorPort);
        destination.Slice(0, bytes).Clear();
        destination[0] = 0x45;   // format 01b, protocol identifier 5 (iSCSI)
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(2), (ushort)(bytes - 4));
        Encoding.UTF8.GetBytes(initiatorPort, destination.Slice(4));
        return bytes;
    }

    /// <summary>Reads an iSCSI TransportID naming an initiator port (format 01b); null when malformed or of another format.</summary>
    private static string? ParseTransportId(ReadOnlySpan<byte> id)
    {
        if (id.Length < 4 || id[0] != 0x45) return null;
        int length = BinaryPrimitives.ReadUInt16BigEndian(id.Slice(2));
        if (length < 4 || 4 + length > id.Length) return null;
        ReadOnlySpan<byte> text = id.Slice(4, length);
        int end = text.IndexOf((byte)0);
        if (end >= 0) text = text.Slice(0, end);
        string name = Encoding.UTF8.GetString(text);
        int separator = name.IndexOf(",i,0x", StringComparison.OrdinalIgnoreCase);
        if (separator <= 0) return null;
        return name.Substring(0, separator) + ",i,0x" + name.Substring(separator + 5).ToLowerInvariant();
    }

    // ---- PERSISTENT RESERVE OUT ----

    /// <summary>PERSISTENT RESERVE OUT; only PREEMPT AND ABORT ever waits (for the preempted nexuses' tasks to end).</summary>
    private ValueTask PersistentReserveOutAsync(ScsiTask task)
    {
        List<string>? preempted;
        lock (_prLock)
        {
            BeginPrChange();
            try
            {
                preempted = PersistentReserveOut(task);
            }
            finally
            {
                RollBackPrChange();
            }
        }
        return preempted is null ? ValueTask.CompletedTask : AbortPreemptedTasksAsync(task, preempted);
    }

    /// <summary>Runs the service action (under _prLock, between BeginPrChange and RollBackPrChange); returns the initiator ports whose tasks PREEMPT AND ABORT must abort, else null.</summary>
    private List<string>? PersistentReserveOut(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if (cdb.Length < 10)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 0);
            return null;
        }
        byte action = (byte)(cdb[1] & 0x1F);
        byte scope = (byte)(cdb[2] >> 4);
        byte type = (byte)(cdb[2] & 0x0F);
        uint parameterLength = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(5));
        if (action > ScsiPrAction.RegisterAndMove)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 4);
            return null;
        }
        if (action == ScsiPrAction.RegisterAndMove ? parameterLength < 24 : parameterLength != PrOutParameterBytes)
        {
            IllegalRequest(task, Asc.ParameterListLengthError, 5);
            return null;
        }
        if (parameterLength > ScsiLimits.MaxParameterListBytes || task.DataOutLength < parameterLength)
        {
            IllegalRequest(task, Asc.ParameterListLengthError, 5);
            return null;
        }
        ReadOnlySpan<byte> list = task.DataOutSpan.Slice(0, (int)parameterLength);
        ulong key = BinaryPrimitives.ReadUInt64BigEndian(list);
        ulong serviceKey = BinaryPrimitives.ReadUInt64BigEndian(list.Slice(8));
        string port = task.Nexus.InitiatorPortName;

        if (action == ScsiPrAction.RegisterAndMove)
        {
            RegisterAndMove(task, type, scope, key, serviceKey, list, port);
            return null;
        }
        bool specifyInitiatorPorts = (list[20] & 0x08) != 0;
        bool aptpl = (list[20] & 0x01) != 0;
        if (specifyInitiatorPorts)
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, 20, 3);
            return null;
        }
        if (action is ScsiPrAction.Reserve or ScsiPrAction.Release or ScsiPrAction.Preempt or ScsiPrAction.PreemptAndAbort)
        {
            if (scope != 0)
            {
                IllegalRequest(task, Asc.InvalidFieldInCdb, 2, 7);
                return null;
            }
            // RELEASE checks the type against the reservation; the others need a valid one.
            if (!ScsiPrType.IsValid(type) && action != ScsiPrAction.Release)
            {
                IllegalRequest(task, Asc.InvalidFieldInCdb, 2, 3);
                return null;
            }
        }

        ScsiPrRegistration? mine = FindRegistration(port);
        if (action is ScsiPrAction.Register or ScsiPrAction.RegisterAndIgnoreExistingKey)
        {
            Register(task, mine, action == ScsiPrAction.RegisterAndIgnoreExistingKey, key, serviceKey, aptpl, port);
            return null;
        }
        // Every other service action needs this I_T nexus registered under the key it gives.
        if (mine is null || mine.Key != key)
        {
            ReservationConflict(task);
            return null;
        }
        switch (action)
        {
            case ScsiPrAction.Reserve:
                if (_pr.Type != 0)
                {
                    if (!IsPrHolder(port) || _pr.Type != type) ReservationConflict(task);
                    return null;   // the holder reserving again with the same type: nothing changes
                }
                _pr.Type = type;
                _pr.Holder = ScsiPrType.IsAllRegistrants(type) ? null : port;
                if (!CommitPrChange(task)) return null;
                _logger.LogInformation("scsi {Target}: {Port} holds a persistent reservation of type {Type}", TargetName, port, type);
                return null;
            case ScsiPrAction.Release:
                if (_pr.Type == 0 || !IsPrHolder(port)) return null;
                if (scope != 0 || _pr.Type != type)
                {
                    IllegalRequest(task, Asc.InvalidReleaseOfPersistentReservation, -1);
                    return null;
                }
                ReleaseReservation(except: port);
                CommitPrChange(task);
                return null;
            case ScsiPrAction.Clear:
                foreach (ScsiPrRegistration registration in _pr.Registrations)
                    if (!ReferenceEquals(registration, mine)) PostUnitAttentionToPort(registration.InitiatorPort, Asc.ReservationsPreempted);
                _pr.Registrations.Clear();
                _pr.Type = 0;
                _pr.Holder = null;
                _pr.Generation++;
                if (!CommitPrChange(task)) return null;
                _logger.LogInformation("scsi {Target}: {Port} cleared every persistent reservation registration", TargetName, port);
                return null;
            default:
                List<string>? preempted = Preempt(task, type, serviceKey, port);
                return action == ScsiPrAction.PreemptAndAbort ? preempted : null;
        }
    }

    private void Register(ScsiTask task, ScsiPrRegistration? mine, bool ignoreExistingKey, ulong key, ulong serviceKey, bool aptpl, string port)
    {
        if (mine is null)
        {
            if (!ignoreExistingKey && key != 0)
            {
                ReservationConflict(task);
                return;
            }
            if (serviceKey == 0) return;   // unregistered and nothing to register: GOOD, no change
            if (_pr.Registrations.Count >= PrRegistrationsMax)
            {
                CheckCondition(task, SenseKey.IllegalRequest, Asc.InsufficientRegistrationResources);
                return;
            }
            _pr.Registrations.Add(new ScsiPrRegistration { InitiatorPort = port, Key = serviceKey });
        }
        else
        {
            if (!ignoreExistingKey && key != mine.Key)
            {
                ReservationConflict(task);
                return;
            }
            if (serviceKey == 0)
            {
                _pr.Registrations.Remove(mine);
                if (_pr.Type != 0 && (ScsiPrType.IsAllRegistrants(_pr.Type) ? _pr.Registrations.Count == 0 : string.Equals(_pr.Holder, port, StringComparison.OrdinalIgnoreCase)))
                    ReleaseReservation(except: port);
            }
            else
            {
                mine.Key = serviceKey;
            }
        }
        _pr.Aptpl = aptpl;
        _pr.Generation++;
        CommitPrChange(task);
    }

    /// <summary>Drops the reservation; registrants other than <paramref name="except"/> learn it when the type said they had access (SPC-4 5.9.11.2).</summary>
    private void ReleaseReservation(string except)
    {
        byte type = _pr.Type;
        _pr.Type = 0;
        _pr.Holder = null;
        if (ScsiPrType.IsRegistrantsOnly(type) || ScsiPrType.IsAllRegistrants(type))
        {
            foreach (ScsiPrRegistration registration in _pr.Registrations)
                if (!string.Equals(registration.InitiatorPort, except, StringComparison.OrdinalIgnoreCase))
                    PostUnitAttentionToPort(registration.InitiatorPort, Asc.ReservationsReleased);
        }
    }

    /// <summary>
    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.9.11.4). Returns the initiator ports whose tasks
    /// PREEMPT AND ABORT aborts: those whose registrations were removed, and the preempter's own
    /// when it named its own key (its registration stays: the I_T nexus that preempts is never
    /// unregistered by it). Null when the command failed.
    /// </summary>
    private List<string>? Preempt(ScsiTask task, byte type, ulong serviceKey, string port)
    {
        bool allRegistrants = _pr.Type != 0 && ScsiPrType.IsAllRegistrants(_pr.Type);
        if (serviceKey == 0 && !allRegistrants)
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, 8);
            return null;
        }
        bool takesReservation;
        var preempted = new List<string>();
        int removed;
        if (_pr.Type == 0)
        {
            takesReservation = false;
            removed = RemoveRegistrations(serviceKey, port, allButPreempter: false, preempted);
        }
        else if (allRegistrants)
        {
            takesReservation = serviceKey == 0;
            removed = RemoveRegistrations(serviceKey, port, allButPreempter: serviceKey == 0, preempted);
        }
        else
        {
            ulong holderKey = FindRegistration(_pr.Holder!)?.Key ?? 0;
            takesReservation = holderKey == serviceKey;
            removed = RemoveRegistrations(serviceKey, port, allButPreempter: false, preempted);
        }
        if (removed == 0 && !takesReservation)
        {
            ReservationConflict(task);
            return null;
        }
        if (takesReservation)
        {
            byte oldType = _pr.Type;
            _pr.Type = type;
            _pr.Holder = ScsiPrType.IsAllRegistrants(type) ? null : port;
            if (oldType != type)
            {
                foreach (ScsiPrRegistration registration in _pr.Registrations)
                    if (!string.Equals(registration.InitiatorPort, port, StringComparison.OrdinalIgnoreCase))
                        PostUnitAttentionToPort(registration.InitiatorPort, Asc.ReservationsReleased);
            }
        }
        Debug.Assert(FindRegistration(port) is not null, "the preempter keeps its registration");
        _pr.Generation++;
        if (!CommitPrChange(task)) return null;
        _logger.LogInformation("scsi {Target}: {Port} preempted {Removed} registration(s){Reservation}", TargetName, port, removed,
            takesReservation ? $" and holds a reservation of type {type}" : "");
        return preempted;
    }

    /// <summary>
    /// Removes the registrations holding <paramref name="key"/> (or, with <paramref name="allButPreempter"/>,
    /// every one), never the preempter's own, and returns how many went. Adds each preempted port to
    /// <paramref name="preempted"/> (the preempter's too when its key matched: PREEMPT AND ABORT aborts
    /// its other tasks); each removed one gets REGISTRATIONS PREEMPTED.
    /// </summary>
    private int RemoveRegistrations(ulong key, string preempter, bool allButPreempter, List<string> preempted)
    {
        int removed = 0;
        for (int i = _pr.Registrations.Count - 1; i >= 0; i--)
        {
            ScsiPrRegistration registration = _pr.Registrations[i];
            bool self = string.Equals(registration.InitiatorPort, preempter, StringComparison.OrdinalIgnoreCase);
            if (allButPreempter ? self : registration.Key != key) continue;
            preempted.Add(registration.InitiatorPort);
            if (self) continue;
            _pr.Registrations.RemoveAt(i);
            removed++;
            PostUnitAttentionToPort(registration.InitiatorPort, Asc.RegistrationsPreempted);
        }
        if (_pr.Type != 0 && !ScsiPrType.IsAllRegistrants(_pr.Type) && FindRegistration(_pr.Holder!) is null)
        {
            _pr.Type = 0;
            _pr.Holder = null;
        }
        if (_pr.Type != 0 && ScsiPrType.IsAllRegistrants(_pr.Type) && _pr.Registrations.Count == 0) _pr.Type = 0;
        return removed;
    }

    /// <summary>
    /// PREEMPT AND ABORT (SPC-4 5.9.11.5, SAM-5 5.6): every task of each preempted I_T nexus, except
    /// this command, is aborted as ABORT TASK SET would abort it (no response: TAS=0), and the
    /// command completes once those already running have ended. A nexus other than the
    /// preempter's that lost tasks also gets COMMANDS CLEARED BY ANOTHER INITIATOR, after its
    /// REGISTRATIONS PREEMPTED. If the transport's bound passes first, the preemption stands (it
    /// is on disk) but the command ends with HARDWARE ERROR: the fence is not known to be complete.
    /// </summary>
    private async ValueTask AbortPreemptedTasksAsync(ScsiTask task, List<string> preemptedPorts)
    {
        if (preemptedPorts.Count == 0) return;
        List<Task<bool>>? running = null;
        int aborted = 0;
        foreach (ScsiItNexus nexus in Volatile.Read(ref _nexuses))
        {
            if (nexus.TaskSet is not IScsiTaskSet taskSet || !ContainsPort(preemptedPorts, nexus.InitiatorPortName)) continue;
            ScsiTaskSetAbort result = taskSet.AbortTaskSet(except: task);
            aborted += result.Aborted;
            if (result.Aborted > 0 && !ReferenceEquals(nexus, task.Nexus)) nexus.PostUnitAttention(Asc.CommandsClearedByAnotherInitiator);
            if (!result.Ended.IsCompletedSuccessfully || !result.Ended.Result) (running ??= new()).Add(result.Ended);
        }
        if (aborted > 0)
            _logger.LogInformation("scsi {Target}: PREEMPT AND ABORT from {Port} aborted {Count} task(s) of the preempted initiator(s)",
                TargetName, task.Nexus.InitiatorPortName, aborted);
        if (running is null) return;
        bool[] ended = await Task.WhenAll(running).ConfigureAwait(false);
        if (Array.IndexOf(ended, false) < 0) return;
        _logger.LogError("scsi {Target}: PREEMPT AND ABORT from {Port}: aborted tasks of the preempted initiator(s) were still running at the bound; answering HARDWARE ERROR",
            TargetName, task.Nexus.InitiatorPortName);
        CheckCondition(task, SenseKey.HardwareError, Asc.InternalTargetFailure);
    }

    private static bool ContainsPort(List<string> ports, string port)
    {
        foreach (string candidate in ports)
            if (string.Equals(candidate, port, StringComparison.OrdinalIgnoreCase)) return true;
        return false;
    }

    private void RegisterAndMove(ScsiTask task, byte type, byte scope, ulong key, ulong serviceKey, ReadOnlySpan<byte> list, string port)
    {
        bool unregister = (list[17] & 0x02) != 0;
        bool aptpl = (list[17] & 0x01) != 0;
        uint idLength = BinaryPrimitives.ReadUInt32BigEndian(list.Slice(20));
        if (24 + (long)idLength > list.Length)
        {
            IllegalParameter(task, Asc.ParameterListLengthError, 20);
            return;
        }
        string? destination = ParseTransportId(list.Slice(24, (int)idLength));
        ScsiPrRegistration? mine = FindRegistration(port);
        if (mine is null || mine.Key != key || _pr.Type == 0 || ScsiPrType.IsAllRegistrants(_pr.Type) || !IsPrHolder(port))
        {
            ReservationConflict(task);
            return;
        }
        if (serviceKey == 0)
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, 8);
            return;
        }
        if (destination is null || string.Equals(destination, port, StringComparison.OrdinalIgnoreCase))
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, 24);
            return;
        }
        if (scope != 0 || !ScsiPrType.IsValid(type))
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 2);
            return;
        }
        ScsiPrRegistration? target = FindRegistration(destination);
        if (target is null)
        {
            target = new ScsiPrRegistration { InitiatorPort = destination, Key = serviceKey };
            _pr.Registrations.Add(target);
        }
        else
        {
            target.Key = serviceKey;
        }
        _pr.Holder = destination;
        _pr.Type = type;
        if (unregister) _pr.Registrations.Remove(mine);
        _pr.Aptpl = aptpl;
        _pr.Generation++;
        if (!CommitPrChange(task)) return;
        _logger.LogInformation("scsi {Target}: {Port} moved its persistent reservation to {Destination}", TargetName, port, destination);
    }
}

/// <summary>How a command touches the medium, for reservation checks (SPC-4 5.9.1 tables).</summary>
internal enum ScsiAccess : byte
{
    /// <summary>Never conflicts (INQUIRY, REPORT LUNS, READ CAPACITY, PR IN/OUT...).</summary>
    None,
    Read,
    Write,
}
