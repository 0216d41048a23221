// One I_T nexus: an initiator port talking to a target port (for iSCSI: one session). It carries
// the names the logical unit reports (VPD 83h, persistent reservations) and the unit attention
// conditions pending for this nexus.
// Invariant: unit attentions are reported once each, oldest first, and never more than
// UnitAttentionsMax are kept (older ones are dropped when the queue overflows).
namespace Target.Protocol.Scsi;

public sealed class ScsiItNexus
{
    /// <summary>Pending unit attentions kept per nexus; SAM lets a device server drop the oldest.</summary>
    public const int UnitAttentionsMax = 16;

    private readonly object _lock = new();
    private readonly Queue<ushort> _unitAttentions = new();
    private volatile int _unitAttentionCount;

    /// <param name="initiatorName">iSCSI initiator name (iqn..., eui..., naa...).</param>
    /// <param name="isid">The 6-byte initiator session id (the initiator port's identifier with the name).</param>
    /// <param name="targetName">iSCSI target name.</param>
    /// <param name="targetPortalGroupTag">TPGT of the portal group the session came through.</param>
    public ScsiItNexus(string initiatorName, ReadOnlySpan<byte> isid, string targetName, ushort targetPortalGroupTag)
    {
        InitiatorName = initiatorName;
        IsidHex = Convert.ToHexString(isid).ToLowerInvariant();
        TargetName = targetName;
        TargetPortalGroupTag = targetPortalGroupTag;
        InitiatorPortName = $"{initiatorName},i,0x{IsidHex}";
        TargetPortName = $"{targetName},t,0x{targetPortalGroupTag:x4}";
    }

    public string InitiatorName { get; }

    public string IsidHex { get; }

    public string TargetName { get; }

    public ushort TargetPortalGroupTag { get; }

    /// <summary>"NAME,i,0xISID": the initiator port identifier (SPC-4 7.6.4.6, iSCSI TransportID format 1).</summary>
    public string InitiatorPortName { get; }

    /// <summary>"NAME,t,0xTPGT": the target port identifier reported in VPD 83h.</summary>
    public string TargetPortName { get; }

    /// <summary>Relative target port identifier (one port per portal group; we have one).</summary>
    public ushort RelativeTargetPortId => 1;

    /// <summary>The transport's handle on this nexus's tasks (PREEMPT AND ABORT); null when nothing can abort them.</summary>
    public IScsiTaskSet? TaskSet { get; set; }

    public bool HasUnitAttention => _unitAttentionCount != 0;

    public void PostUnitAttention(ushort ascAscq)
    {
        lock (_lock)
        {
            foreach (ushort pending in _unitAttentions)
                if (pending == ascAscq) return;
            if (_unitAttentions.Count >= UnitAttentionsMax) _unitAttentions.Dequeue();
            _unitAttentions.Enqueue(ascAscq);
            _unitAttentionCount = _unitAttentions.Count;
        }
    }

    public bool TryTakeUnitAttention(out ushort ascAscq)
    {
        ascAscq = 0;
        if (_unitAttentionCount == 0) return false;
        lock (_lock)
        {
            if (!_unitAttentions.TryDequeue(out ascAscq)) return false;
            _unitAttentionCount = _unitAttentions.Count;
            return true;
        }
    }

    /// <summary>The oldest pending unit attention and how many are pending, without reporting it (QUERY ASYNCHRONOUS EVENT).</summary>
    public bool TryPeekUnitAttention(out ushort ascAscq, out int pending)
    {
        ascAscq = 0;
        pending = 0;
        if (_unitAttentionCount == 0) return false;
        lock (_lock)
        {
            if (!_unitAttentions.TryPeek(out ascAscq)) return false;
            pending = _unitAttentions.Count;
            return true;
        }
    }

    public void ClearUnitAttentions()
    {
        lock (_lock)
        {
            _unitAttentions.Clear();
            _unitAttentionCount = 0;
        }
    }

    public override string ToString() => InitiatorPortName;
}
