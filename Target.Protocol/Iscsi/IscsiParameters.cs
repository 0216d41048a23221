// The operational parameters of a session/connection after login negotiation (RFC 7143 13),
// starting from the RFC defaults, and the negotiation rules that produce them.
using System.Globalization;

namespace Target.Protocol.Iscsi;

public enum IscsiSessionType
{
    Normal,
    Discovery,
}

public sealed class IscsiSessionParameters
{
    public IscsiSessionType SessionType = IscsiSessionType.Normal;
    public string InitiatorName = "";
    public string? InitiatorAlias;
    public string? TargetName;

    public bool HeaderDigest;
    public bool DataDigest;

    /// <summary>What the initiator declared: the longest data segment we may send it.</summary>
    public int InitiatorMaxRecvDataSegmentBytes = IscsiLimits.DefaultMaxRecvDataSegmentBytes;

    /// <summary>What we declared: the longest data segment the initiator may send us.</summary>
    public int TargetMaxRecvDataSegmentBytes = IscsiLimits.DefaultMaxRecvDataSegmentBytes;

    public int MaxBurstBytes = IscsiLimits.DefaultMaxBurstBytes;
    public int FirstBurstBytes = IscsiLimits.DefaultFirstBurstBytes;
    public bool InitialR2T = true;
    public bool ImmediateData = true;
    public int MaxOutstandingR2T = 1;
    public bool DataPduInOrder = true;
    public bool DataSequenceInOrder = true;
    public int DefaultTime2Wait = IscsiLimits.DefaultTime2Wait;
    public int DefaultTime2Retain = IscsiLimits.DefaultTime2Retain;
    public int ErrorRecoveryLevel;
    public int MaxConnections = 1;

    /// <summary>Unsolicited data (immediate plus unsolicited Data-Out) a write may carry.</summary>
    public int UnsolicitedBytesMax => InitialR2T && !ImmediateData ? 0 : FirstBurstBytes;

    public override string ToString() =>
        $"HeaderDigest={(HeaderDigest ? "CRC32C" : "None")} DataDigest={(DataDigest ? "CRC32C" : "None")} " +
        $"MaxRecvDataSegmentLength={InitiatorMaxRecvDataSegmentBytes}/{TargetMaxRecvDataSegmentBytes} MaxBurstLength={MaxBurstBytes} " +
        $"FirstBurstLength={FirstBurstBytes} InitialR2T={YesNo(InitialR2T)} ImmediateData={YesNo(ImmediateData)} " +
        $"MaxOutstandingR2T={MaxOutstandingR2T}";

    private static string YesNo(bool value) => value ? "Yes" : "No";
}

/// <summary>Value parsing and the result functions of RFC 7143 6.2 / 13.</summary>
public static class IscsiValues
{
    public const string Yes = "Yes";
    public const string No = "No";
    public const string Reject = "Reject";
    public const string Irrelevant = "Irrelevant";
    public const string NotUnderstood = "NotUnderstood";
    public const string None = "None";
    public const string Crc32C = "CRC32C";

    public static bool TryParseBool(string value, out bool result)
    {
        if (value == Yes)
        {
            result = true;
            return true;
        }
        if (value == No)
        {
            result = false;
            return true;
        }
        result = false;
        return false;
    }

    /// <summary>A decimal or 0x-hex number within [min, max].</summary>
    public static bool TryParseNumber(string value, long min, long max, out long result)
    {
        result = 0;
        bool ok = value.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? long.TryParse(value.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out result)
            : long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out result);
        return ok && result >= min && result <= max;
    }

    public static string Format(long value) => value.ToString(CultureInfo.InvariantCulture);

    public static string Format(bool value) => value ? Yes : No;

    /// <summary>The first value of the initiator's list that <paramref name="acceptable"/> accepts, or null.</summary>
    public static string? FirstAcceptable(string list, Func<string, bool> acceptable)
    {
        foreach (string item in list.Split(','))
            if (acceptable(item)) return item;
        return null;
    }
}
