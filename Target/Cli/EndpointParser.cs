using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;

namespace Target.Cli;

/// <summary>"HOST:PORT" for listeners and clients: "127.0.0.1:10809", "[::1]:0", "localhost:9810", ":10809" (loopback).</summary>
public static class EndpointParser
{
    /// <summary>Words that switch a listener off.</summary>
    public static bool IsOff(string? text) =>
        text is not null && (text.Equals("off", StringComparison.OrdinalIgnoreCase) || text.Equals("none", StringComparison.OrdinalIgnoreCase));

    public static IPEndPoint Parse(string text)
    {
        if (!TryParse(text, out IPEndPoint? endPoint, out string? error))
            throw new FormatException(error);
        return endPoint;
    }

    public static bool TryParse(string? text, [NotNullWhen(true)] out IPEndPoint? endPoint, [NotNullWhen(false)] out string? error)
    {
        endPoint = null;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "empty address";
            return false;
        }

        text = text.Trim();
        int colon = text.LastIndexOf(':');
        if (colon < 0)
        {
            error = $"address '{text}' needs HOST:PORT";
            return false;
        }

        string host = text[..colon];
        string portText = text[(colon + 1)..];
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port > IPEndPoint.MaxPort)
        {
            error = $"address '{text}' has a bad port '{portText}'";
            return false;
        }

        if (host.StartsWith('[') && host.EndsWith(']'))
            host = host[1..^1];

        IPAddress? address;
        if (host.Length == 0 || host.Equals("localhost", StringComparison.OrdinalIgnoreCase))
        {
            address = IPAddress.Loopback;
        }
        else if (!IPAddress.TryParse(host, out address))
        {
            try
            {
                address = Dns.GetHostAddresses(host).FirstOrDefault();
            }
            catch (System.Net.Sockets.SocketException)
            {
                address = null;
            }
            if (address is null)
            {
                error = $"address '{text}': cannot resolve host '{host}'";
                return false;
            }
        }

        endPoint = new IPEndPoint(address, port);
        error = null;
        return true;
    }

    /// <summary>"127.0.0.1:10809" / "[::1]:10809".</summary>
    public static string Format(IPEndPoint endPoint) => endPoint.ToString();
}
