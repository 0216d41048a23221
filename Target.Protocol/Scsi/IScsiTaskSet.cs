// The transport's side of one I_T nexus's tasks, for the SCSI functions that end the tasks of
// another nexus from inside the logical unit (PERSISTENT RESERVE OUT PREEMPT AND ABORT). Task
// management proper (ABORT TASK SET, LOGICAL UNIT RESET...) arrives through the transport and
// reaches the same code there.
namespace Target.Protocol.Scsi;

/// <summary>What <see cref="IScsiTaskSet.AbortTaskSet"/> did.</summary>
/// <param name="Aborted">Tasks of the nexus aborted by this call.</param>
/// <param name="Ended">
/// Completes with true once every aborted task that was running on the logical unit has ended
/// (including tasks an earlier abort left running), or with false when some were still running
/// after the transport's bound.
/// </param>
public readonly record struct ScsiTaskSetAbort(int Aborted, Task<bool> Ended);

public interface IScsiTaskSet
{
    /// <summary>
    /// Aborts every task of this I_T nexus except <paramref name="except"/>, as ABORT TASK SET
    /// would: the tasks end without a response (TAS=0). Callable from any thread; never throws.
    /// </summary>
    ScsiTaskSetAbort AbortTaskSet(ScsiTask? except);
}
