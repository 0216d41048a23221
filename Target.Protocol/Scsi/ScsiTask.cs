// The transport-neutral view of one SCSI command. A transport (iSCSI) derives its pooled task
// object from it, fills the CDB, the I_T nexus and the data-out bytes, runs the logical unit,
// and sends back the status, sense and data-in the unit produced.
// Invariants: DataInLength never exceeds the data-in buffer; a data-in buffer rented here is
// returned exactly once (ResetScsi); sense is set only with CHECK CONDITION.
using System.Buffers;

namespace Target.Protocol.Scsi;

public abstract class ScsiTask
{
    /// <summary>Longest CDB accepted (16 bytes in the BHS plus an extended-CDB AHS).</summary>
    public const int CdbBytesMax = 260;

    /// <summary>Sense buffer size (SPC-4: at most 252 bytes; ours are far shorter).</summary>
    public const int SenseBytesMax = 96;

    /// <summary>Replies up to this size (INQUIRY, MODE SENSE, READ CAPACITY...) use the task's own buffer.</summary>
    public const int ScratchBytes = 4096;

    public readonly byte[] CdbBuffer = new byte[CdbBytesMax];
    public int CdbLength;

    public ReadOnlySpan<byte> Cdb => CdbBuffer.AsSpan(0, CdbLength);

    private ScsiExecution? _execution;

    /// <summary>The task's reusable completion for commands whose I/O finishes later (made on first use).</summary>
    public ScsiExecution Execution => _execution ??= new ScsiExecution(this);

    /// <summary>LUN number decoded from the transport's LUN field.</summary>
    public ulong Lun;

    public ScsiTaskAttribute Attribute;

    public ScsiItNexus Nexus = null!;

    /// <summary>What the initiator said it would transfer (iSCSI Expected Data Transfer Length).</summary>
    public int ExpectedDataTransferLength;

    public bool ReadExpected;
    public bool WriteExpected;

    /// <summary>Data-out bytes (the transport owns this buffer).</summary>
    public byte[]? DataOut;
    public int DataOutLength;

    /// <summary>
    /// Data-out bytes the CDB itself transfers (e.g. WRITE: blocks times block size), set by the
    /// handlers of commands whose residual the transport must report against the Expected Data
    /// Transfer Length; -1 when the handler did not say.
    /// </summary>
    public long CommandDataOutBytes = -1;

    public ReadOnlySpan<byte> DataOutSpan => DataOut is null ? default : DataOut.AsSpan(0, DataOutLength);

    public ReadOnlyMemory<byte> DataOutMemory => DataOut is null ? default : DataOut.AsMemory(0, DataOutLength);

    /// <summary>Data-in produced (may be longer than the expected length; the transport truncates and reports the residual).</summary>
    public byte[]? DataIn;
    public int DataInLength;
    private bool _dataInRented;

    public readonly byte[] Scratch = new byte[ScratchBytes];

    public ScsiStatus Status;
    public readonly byte[] Sense = new byte[SenseBytesMax];
    public int SenseLength;

    /// <summary>Set by the transport when the task was aborted: the unit stops early where it can.</summary>
    public volatile bool Aborted;

    /// <summary>A zeroed data-in buffer of <paramref name="bytes"/> (the task's scratch when it fits).</summary>
    public Memory<byte> AllocateDataIn(int bytes, bool clear = true)
    {
        ReleaseDataIn();
        if (bytes <= Scratch.Length)
        {
            DataIn = Scratch;
        }
        else
        {
            DataIn = ArrayPool<byte>.Shared.Rent(bytes);
            _dataInRented = true;
        }
        DataInLength = bytes;
        Memory<byte> memory = DataIn.AsMemory(0, bytes);
        if (clear) memory.Span.Clear();
        return memory;
    }

    /// <summary>Shortens the data-in to what the command's allocation length allows (not an error: SPC 4.2.5.6).</summary>
    public void TruncateDataIn(int allocationLength)
    {
        if (DataInLength > allocationLength) DataInLength = Math.Max(0, allocationLength);
    }

    public void SetGood()
    {
        Status = ScsiStatus.Good;
        SenseLength = 0;
    }

    public void SetStatus(ScsiStatus status)
    {
        Status = status;
        SenseLength = 0;
        DataInLength = 0;
    }

    public void CheckCondition(in ScsiSenseInfo sense, bool descriptorFormat)
    {
        Status = ScsiStatus.CheckCondition;
        SenseLength = ScsiSense.Write(Sense, sense, descriptorFormat);
        DataInLength = 0;
    }

    public void ReleaseDataIn()
    {
        if (_dataInRented && DataIn is not null) ArrayPool<byte>.Shared.Return(DataIn);
        _dataInRented = false;
        DataIn = null;
        DataInLength = 0;
    }

    /// <summary>Clears everything the SCSI layer set, before the transport reuses the object.</summary>
    protected void ResetScsi()
    {
        ReleaseDataIn();
        CdbLength = 0;
        Lun = 0;
        Attribute = ScsiTaskAttribute.Simple;
        Nexus = null!;
        ExpectedDataTransferLength = 0;
        ReadExpected = false;
        WriteExpected = false;
        DataOut = null;
        DataOutLength = 0;
        CommandDataOutBytes = -1;
        Status = ScsiStatus.Good;
        SenseLength = 0;
        Aborted = false;
    }
}
