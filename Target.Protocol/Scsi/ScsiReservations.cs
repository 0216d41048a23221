// Access control state of the logical unit: PREVENT ALLOW MEDIUM REMOVAL per I_T nexus, SPC-2
// RESERVE/RELEASE (6 and 10), the reservation check that runs before each command, and the
// dispatch of the commands beyond the core set (reservations, reports, third-party copy).
//
// Invariants:
// - An SPC-2 reservation is held by one initiator port; it goes away on RELEASE by its holder,
//   on logical unit or target reset and when its I_T nexus is lost (logout, dropped connection).
// - RESERVE and RELEASE conflict while any persistent reservation registration exists (CRH=0).
namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    public const ushort TargetPortGroupId = 1;

    private readonly object _stateLock = new();
    private readonly HashSet<ScsiItNexus> _preventing = new();
    private string? _reserveHolder;

    /// <summary>True when some I_T nexus has medium removal prevented.</summary>
    private bool IsRemovalPrevented()
    {
        lock (_stateLock) return _preventing.Count > 0;
    }

    private void PreventAllowMediumRemoval(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        int prevent = cdb[4] & 0x03;
        lock (_stateLock)
        {
            if (prevent == 0) _preventing.Remove(task.Nexus);
            else _preventing.Add(task.Nexus);
        }
        task.SetGood();
    }

    /// <summary>How <paramref name="cdb"/> touches the medium (SPC-4 tables 58 and 59, "allowed" rows are None).</summary>
    internal static ScsiAccess ClassifyAccess(ReadOnlySpan<byte> cdb)
    {
        switch (cdb[0])
        {
            case ScsiOpcode.Inquiry:
            case ScsiOpcode.ReportLuns:
            case ScsiOpcode.RequestSense:
            case ScsiOpcode.TestUnitReady:
            case ScsiOpcode.ReadCapacity10:
            case ScsiOpcode.PersistentReserveIn:
            case ScsiOpcode.PersistentReserveOut:
            case ScsiOpcode.MaintenanceIn:
            case ScsiOpcode.ReceiveCopyResults:
                return ScsiAccess.None;
            case ScsiOpcode.ServiceActionIn16:
                return (cdb[1] & 0x1F) == ScsiServiceAction.ReadCapacity16 ? ScsiAccess.None : ScsiAccess.Read;
            case ScsiOpcode.PreventAllowMediumRemoval:
                return (cdb[4] & 0x03) == 0 ? ScsiAccess.None : ScsiAccess.Write;
            case ScsiOpcode.Read6:
            case ScsiOpcode.Read10:
            case ScsiOpcode.Read12:
            case ScsiOpcode.Read16:
            case ScsiOpcode.Verify10:
            case ScsiOpcode.Verify12:
            case ScsiOpcode.Verify16:
            case ScsiOpcode.PreFetch10:
            case ScsiOpcode.PreFetch16:
            case ScsiOpcode.ModeSense6:
            case ScsiOpcode.ModeSense10:
                return ScsiAccess.Read;
            default:
                return ScsiAccess.Write;
        }
    }

    /// <summary>Reservation check before a command runs. False when the task already holds RESERVATION CONFLICT.</summary>
    private bool CheckReservation(ScsiTask task, byte opcode)
    {
        string? holder = Volatile.Read(ref _reserveHolder);
        if (holder is not null && !string.Equals(holder, task.Nexus.InitiatorPortName, StringComparison.OrdinalIgnoreCase)
            && opcode is not (ScsiOpcode.Inquiry or ScsiOpcode.ReportLuns or ScsiOpcode.RequestSense or ScsiOpcode.Release6 or ScsiOpcode.Release10))
        {
            ReservationConflict(task);
            return false;
        }
        if (opcode is ScsiOpcode.Reserve6 or ScsiOpcode.Reserve10 or ScsiOpcode.Release6 or ScsiOpcode.Release10) return true;
        if (PersistentReservationConflicts(task.Nexus, ClassifyAccess(task.Cdb)))
        {
            ReservationConflict(task);
            return false;
        }
        return true;
    }

    /// <summary>RESERVE(6) and RESERVE(10) (SPC-2 7.21): the whole logical unit, for this initiator port.</summary>
    private void Reserve(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if (cdb[0] == ScsiOpcode.Reserve10 && (cdb[1] & 0x12) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1);   // third-party and long-id reservations are not supported
            return;
        }
        if (cdb[0] == ScsiOpcode.Reserve6 && (cdb[1] & 0x01) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1);   // extents (obsolete)
            return;
        }
        if (HasRegistrations)
        {
            ReservationConflict(task);
            return;
        }
        string port = task.Nexus.InitiatorPortName;
        lock (_stateLock)
        {
            if (_reserveHolder is not null && !string.Equals(_reserveHolder, port, StringComparison.OrdinalIgnoreCase))
            {
                ReservationConflict(task);
                return;
            }
            _reserveHolder = port;
        }
    }

    /// <summary>RELEASE(6) and RELEASE(10): releases this port's reservation; a no-op for anyone else.</summary>
    private void Release(ScsiTask task)
    {
        if (HasRegistrations)
        {
            ReservationConflict(task);
            return;
        }
        string port = task.Nexus.InitiatorPortName;
        lock (_stateLock)
        {
            if (string.Equals(_reserveHolder, port, StringComparison.OrdinalIgnoreCase)) _reserveHolder = null;
        }
    }

    private void OnReset()
    {
        lock (_stateLock)
        {
            _preventing.Clear();
            _reserveHolder = null;
        }
    }

    private void OnNexusLost(ScsiItNexus nexus)
    {
        lock (_stateLock)
        {
            _preventing.Remove(nexus);
            if (string.Equals(_reserveHolder, nexus.InitiatorPortName, StringComparison.OrdinalIgnoreCase)) _reserveHolder = null;
        }
    }

    /// <summary>Commands beyond the core set (reservations, copy, reports). False when the opcode is unknown.</summary>
    private async ValueTask<bool> ExecuteExtendedAsync(ScsiTask task, byte opcode, CancellationToken ct)
    {
        switch (opcode)
        {
            case ScsiOpcode.Reserve6:
            case ScsiOpcode.Reserve10:
                Reserve(task);
                return true;
            case ScsiOpcode.Release6:
            case ScsiOpcode.Release10:
                Release(task);
                return true;
            case ScsiOpcode.PersistentReserveIn:
                PersistentReserveIn(task);
                return true;
            case ScsiOpcode.PersistentReserveOut:
                await PersistentReserveOutAsync(task).ConfigureAwait(false);
                return true;
            case ScsiOpcode.MaintenanceIn:
                MaintenanceIn(task);
                return true;
            case ScsiOpcode.ExtendedCopy:
                await ExtendedCopyAsync(task, ct).ConfigureAwait(false);
                return true;
            case ScsiOpcode.ReceiveCopyResults:
                ReceiveCopyResults(task);
                return true;
            default:
                return false;
        }
    }
}
