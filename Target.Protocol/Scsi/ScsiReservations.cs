// Access control state of the logical unit: PREVENT ALLOW MEDIUM REMOVAL per I_T nexus and the
// reservation checks that run before each command.
namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    public const ushort TargetPortGroupId = 1;

    private readonly object _stateLock = new();
    private readonly HashSet<ScsiItNexus> _preventing = new();

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

    /// <summary>Reservation check before a command runs. False when the task already holds RESERVATION CONFLICT.</summary>
    private bool CheckReservation(ScsiTask task, byte opcode)
    {
        _ = task;
        _ = opcode;
        return true;
    }

    private void OnReset()
    {
        lock (_stateLock) _preventing.Clear();
    }

    private void OnNexusLost(ScsiItNexus nexus)
    {
        lock (_stateLock) _preventing.Remove(nexus);
    }

    private bool ExtendedCopySupported => false;

    /// <summary>Commands beyond the core set (reservations, copy, reports). False when the opcode is unknown.</summary>
    private ValueTask<bool> ExecuteExtendedAsync(ScsiTask task, byte opcode, CancellationToken ct)
    {
        _ = task;
        _ = opcode;
        _ = ct;
        return ValueTask.FromResult(false);
    }
}
