// Text key=value pairs of Login and Text PDUs (RFC 7143 6.1): UTF-8 "key=value" strings, each
// terminated by NUL. Pure parser and encoder; login and discovery are not hot paths, so plain
// strings and lists are used here.
using System.Text;

namespace Target.Protocol.Iscsi;

public sealed class IscsiTextWriter
{
    private readonly MemoryStream _buffer = new();

    public int Length => (int)_buffer.Length;

    public void Add(string key, string value)
    {
        byte[] bytes = Encoding.UTF8.GetBytes($"{key}={value}");
        _buffer.Write(bytes);
        _buffer.WriteByte(0);
    }

    public byte[] ToArray() => _buffer.ToArray();
}

public static class IscsiText
{
    /// <summary>
    /// Parses NUL-terminated key=value strings. Trailing NULs (padding) are ignored. False, with a
    /// reason, for a string without '=', an empty or over-long key, an over-long value, invalid
    /// UTF-8, or a last string without its NUL terminator.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> data, List<KeyValuePair<string, string>> pairs, out string? error)
    {
        error = null;
        int position = 0;
        while (position < data.Length)
        {
            int end = data.Slice(position).IndexOf((byte)0);
            if (end < 0)
            {
                error = "text is not NUL-terminated";
                return false;
            }
            ReadOnlySpan<byte> item = data.Slice(position, end);
            position += end + 1;
            if (item.IsEmpty) continue;
            int equals = item.IndexOf((byte)'=');
            if (equals <= 0)
            {
                error = equals == 0 ? "empty key" : "key without '='";
                return false;
            }
            if (equals > IscsiLimits.KeyBytesMax)
            {
                error = "key longer than 63 bytes";
                return false;
            }
            if (item.Length - equals - 1 > IscsiLimits.ValueBytesMax)
            {
                error = "value longer than 8192 bytes";
                return false;
            }
            string key;
            string value;
            try
            {
                var strict = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
                key = strict.GetString(item.Slice(0, equals));
                value = strict.GetString(item.Slice(equals + 1));
            }
            catch (DecoderFallbackException)
            {
                error = "text is not valid UTF-8";
                return false;
            }
            pairs.Add(new KeyValuePair<string, string>(key, value));
        }
        return true;
    }

    public static byte[] Encode(IEnumerable<KeyValuePair<string, string>> pairs)
    {
        var writer = new IscsiTextWriter();
        foreach (KeyValuePair<string, string> pair in pairs) writer.Add(pair.Key, pair.Value);
        return writer.ToArray();
    }
}
