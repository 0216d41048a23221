// Handshake-phase option parsing: pure functions over spans. The handshake loop (NbdHandshake)
// owns the socket and decides what to answer; these only say what the client sent, or that it
// is malformed (which the handshake answers with NBD_REP_ERR_INVALID).
using System.Buffers.Binary;
using System.Text;

namespace Target.Protocol.Nbd;

/// <summary>An option request header: the option code and how many data bytes follow.</summary>
public readonly record struct NbdOptionHeader(uint Option, uint DataBytes);

/// <summary>Information items a client asked for in NBD_OPT_INFO / NBD_OPT_GO.</summary>
[Flags]
public enum NbdInfoRequests
{
    None = 0,
    Export = 1 << NbdInfo.Export,
    Name = 1 << NbdInfo.Name,
    Description = 1 << NbdInfo.Description,
    BlockSize = 1 << NbdInfo.BlockSize,
}

public static class NbdOptions
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static NbdParseStatus TryParseHeader(ReadOnlySpan<byte> input, out NbdOptionHeader header, out int consumed)
    {
        header = default;
        consumed = 0;
        if (input.Length < NbdLimits.OptionHeaderBytes) return NbdParseStatus.Incomplete;
        if (BinaryPrimitives.ReadUInt64BigEndian(input) != NbdMagic.IHaveOpt) return NbdParseStatus.BadMagic;
        header = new NbdOptionHeader(
            BinaryPrimitives.ReadUInt32BigEndian(input.Slice(8)),
            BinaryPrimitives.ReadUInt32BigEndian(input.Slice(12)));
        consumed = NbdLimits.OptionHeaderBytes;
        return NbdParseStatus.Complete;
    }

    public static int WriteHeader(Span<byte> destination, uint option, uint dataBytes)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(destination.Slice(12), dataBytes);
        return NbdLimits.OptionHeaderBytes;
    }

    /// <summary>An NBD string: valid UTF-8, no NUL, at most <see cref="NbdLimits.StringBytesMax"/> bytes.</summary>
    public static bool TryDecodeString(ReadOnlySpan<byte> bytes, out string value)
    {
        value = "";
        if (bytes.Length > NbdLimits.StringBytesMax) return false;
        if (bytes.IndexOf((byte)0) >= 0) return false;
        try
        {
            value = StrictUtf8.GetString(bytes);
            return true;
        }
        catch (DecoderFallbackException)
        {
            return false;
        }
    }

    /// <summary>
    /// Data of NBD_OPT_INFO and NBD_OPT_GO: u32 name length, name, u16 request count, u16 x count.
    /// Unknown information types are ignored, as the spec requires.
    /// </summary>
    public static bool TryParseInfoRequest(ReadOnlySpan<byte> data, out string exportName, out NbdInfoRequests requests)
    {
        exportName = "";
        requests = NbdInfoRequests.None;
        if (data.Length < 6) return false;
        uint nameBytes = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameBytes > (uint)(data.Length - 6)) return false;
        if (!TryDecodeString(data.Slice(4, (int)nameBytes), out exportName)) return false;
        ReadOnlySpan<byte> rest = data.Slice(4 + (int)nameBytes);
        int count = BinaryPrimitives.ReadUInt16BigEndian(rest);
        rest = rest.Slice(2);
        if (rest.Length != count * 2) return false;
        for (int i = 0; i < count; i++)
        {
            ushort info = BinaryPrimitives.ReadUInt16BigEndian(rest.Slice(i * 2));
            if (info <= NbdInfo.BlockSize) requests |= (NbdInfoRequests)(1 << info);
        }
        return true;
    }

    /// <summary>
    /// Data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: u32 name length, name,
    /// u32 query count, then per query u32 length and the query string.
    /// </summary>
    public static bool TryParseMetaContextRequest(ReadOnlySpan<byte> data, out string exportName, out string[] queries)
    {
        exportName = "";
        queries = [];
        if (data.Length < 8) return false;
        uint nameBytes = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameBytes > (uint)(data.Length - 8)) return false;
        if (!TryDecodeString(data.Slice(4, (int)nameBytes), out exportName)) return false;
        ReadOnlySpan<byte> rest = data.Slice(4 + (int)nameBytes);
        uint count = BinaryPrimitives.ReadUInt32BigEndian(rest);
        rest = rest.Slice(4);
        // Each query takes at least 4 bytes, which bounds the count by the data actually sent.
        if (count > (uint)(rest.Length / 4)) return false;
        var parsed = new string[count];
        for (int i = 0; i < parsed.Length; i++)
        {
            if (rest.Length < 4) return false;
            uint queryBytes = BinaryPrimitives.ReadUInt32BigEndian(rest);
            rest = rest.Slice(4);
            if (queryBytes > (uint)rest.Length) return false;
            if (!TryDecodeString(rest.Slice(0, (int)queryBytes), out parsed[i])) return false;
            rest = rest.Slice((int)queryBytes);
        }
        if (!rest.IsEmpty) return false;
        queries = parsed;
        return true;
    }

    /// <summary>
    /// Which base:allocation replies a query yields. For LIST, an empty query list and the
    /// "base:" wildcard list it; for SET only the exact name selects it. Unknown namespaces and
    /// leaf names are ignored (never an error), as the spec requires.
    /// </summary>
    public static bool SelectsBaseAllocation(string[] queries, bool listing)
    {
        if (queries.Length == 0) return listing;
        foreach (string query in queries)
        {
            if (query == NbdMetaContext.BaseAllocation) return true;
            if (listing && query == NbdMetaContext.BaseNamespace) return true;
        }
        return false;
    }
}
