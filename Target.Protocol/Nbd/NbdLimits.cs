// Target's NBD limits. Relations between them are asserted in NbdLimitsTests.
namespace Target.Protocol.Nbd;

public static class NbdLimits
{
    /// <summary>
    /// Largest READ or WRITE payload served (advertised as the maximum block size). proto.md says
    /// a client wanting interoperability keeps READ/WRITE at or below 2^25, and a server should
    /// not treat anything below 2^25 as a denial of service.
    /// </summary>
    public const int MaxRequestBytes = 32 * 1024 * 1024;

    /// <summary>
    /// An oversized WRITE up to this length has its payload read and dropped so the stream stays in
    /// step, and gets EINVAL. Beyond it the length is absurd and the connection is closed.
    /// </summary>
    public const long DrainableWriteBytesMax = 4L * MaxRequestBytes;

    /// <summary>Advertised minimum block size: any byte alignment is served (read-modify-write below 4 KiB).</summary>
    public const int MinimumBlockBytes = 1;

    /// <summary>Advertised preferred block size when the volume reports nothing better (the chunk size).</summary>
    public const int PreferredBlockBytes = 4096;

    /// <summary>NBD strings (names, descriptions, messages) must be no longer than this.</summary>
    public const int StringBytesMax = 4096;

    /// <summary>Longest option payload accepted during the handshake; longer options close the connection.</summary>
    public const int OptionDataBytesMax = 64 * 1024;

    /// <summary>Options one connection may send before it is considered abusive and dropped.</summary>
    public const int OptionsPerHandshakeMax = 1024;

    /// <summary>Requests in flight on one connection before the receive loop stops reading (backpressure).</summary>
    public const int QueueDepthMax = 512;

    /// <summary>Payload bytes in flight on one connection before the receive loop stops reading.</summary>
    public const long InFlightBytesMax = 4L * MaxRequestBytes;

    /// <summary>Size of each connection's receive buffer; a header plus many small writes fit in it.</summary>
    public const int ReceiveBufferBytes = 256 * 1024;

    /// <summary>A write whose missing payload is at least this long is received straight into its own buffer.</summary>
    public const int DirectReceiveMinBytes = 64 * 1024;

    /// <summary>Replies up to this size are copied into the coalescing send buffer; larger ones are sent from their own buffer.</summary>
    public const int CoalesceReplyBytesMax = 64 * 1024;

    /// <summary>Capacity of each connection's coalescing send buffer.</summary>
    public const int SendBufferBytes = 256 * 1024;

    /// <summary>Largest error message carried in a structured error chunk (it must fit the per-request reply buffer).</summary>
    public const int ErrorMessageBytesMax = 200;

    /// <summary>Per-request buffer for header-only replies (simple replies, error chunks, one-extent block status).</summary>
    public const int SmallReplyBytes = 256;

    /// <summary>Most descriptors in one block status reply; the client asks again for the rest.</summary>
    public const int BlockStatusDescriptorsMax = 4096;

    /// <summary>Bytes of a request header.</summary>
    public const int RequestHeaderBytes = 28;

    /// <summary>Bytes of a simple reply header.</summary>
    public const int SimpleReplyHeaderBytes = 16;

    /// <summary>Bytes of a structured reply chunk header.</summary>
    public const int StructuredReplyHeaderBytes = 20;

    /// <summary>Bytes of an option request header (IHAVEOPT, option, length).</summary>
    public const int OptionHeaderBytes = 16;

    /// <summary>Bytes of an option reply header (magic, option, type, length).</summary>
    public const int OptionReplyHeaderBytes = 20;
}
