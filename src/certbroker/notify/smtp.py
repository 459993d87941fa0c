"""Mail out over SMTP (smtplib): plain, STARTTLS or TLS from the first byte, with a log-in
when a user is set. Every way it can go wrong becomes one line naming what to fix."""

from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses, parseaddr

from certbroker.domain.errors import TransientError, UsageError
from certbroker.domain.notify import MailConfig


class SmtpMailer:
    """`ports.Mailer` over smtplib. `ca_file`: trust these CA certificates for the server's
    TLS certificate instead of the system's (a private mail relay)."""

    def __init__(self, ca_file: str | None = None) -> None:
        self.ca_file = ca_file

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def send(self, config: MailConfig, message: EmailMessage) -> str:
        """Send `message`; the server's answer to the end of the data ("250 …").
        UsageError for what a person must fix (address, TLS, password), TransientError for
        what may pass (the server unreachable, busy, or refusing for now)."""
        where = config.where
        try:
            if config.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    config.host, config.effective_port, timeout=config.timeout, context=self._tls()
                )
            else:
                smtp = smtplib.SMTP(config.host, config.effective_port, timeout=config.timeout)
        except (ConnectionRefusedError, TimeoutError) as exc:
            raise TransientError(f"cannot reach the SMTP server at {where}: {exc}") from None
        except socket.gaierror as exc:
            raise UsageError(f"SMTP host {config.host!r} is not known: {exc.strerror}") from None
        except ssl.SSLError as exc:
            raise UsageError(f"TLS with the SMTP server at {where} failed: {exc}") from None
        except OSError as exc:
            raise TransientError(f"cannot reach the SMTP server at {where}: {exc}") from None
        try:
            with smtp:
                smtp.ehlo()
                if config.security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise UsageError(
                            f"the SMTP server at {where} does not offer STARTTLS: "
                            "set smtp_security to tls (port 465) or, on a trusted network, none"
                        )
                    smtp.starttls(context=self._tls())
                    smtp.ehlo()
                if config.user:
                    smtp.login(config.user, config.password)
                return _transmit(smtp, where, message)
        except smtplib.SMTPAuthenticationError as exc:
            raise UsageError(
                f"the SMTP server at {where} refused user {config.user!r}'s password "
                f"({exc.smtp_code} {_text(exc.smtp_error)})"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise UsageError(
                f"the SMTP server at {where} does not accept a log-in here "
                "(AUTH is offered only after STARTTLS or TLS?)"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            wrong = ", ".join(f"{k} ({v[0]} {_text(v[1])})"
                              for k, v in exc.recipients.items())  # fmt: skip
            raise UsageError(f"the SMTP server at {where} refused {wrong}") from None
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code == 530:  # "Must issue a STARTTLS command first", "Auth required"
                raise UsageError(
                    f"the SMTP server at {where} wants STARTTLS or a log-in first "
                    f"({exc.smtp_code} {_text(exc.smtp_error)}): check smtp_security and "
                    "smtp_user"
                ) from None
            raise UsageError(
                f"the SMTP server at {where} refused the sender {exc.sender!r} "
                f"({exc.smtp_code} {_text(exc.smtp_error)}): check smtp_from"
            ) from None
        except smtplib.SMTPResponseException as exc:
            text = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise TransientError(f"the SMTP server at {where} said {text}") from None
            raise UsageError(f"the SMTP server at {where} said {text}") from None
        except ssl.SSLError as exc:
            raise UsageError(f"TLS with the SMTP server at {where} failed: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"the SMTP server at {where} failed: {exc}") from None


def _transmit(smtp: smtplib.SMTP, where: str, message: EmailMessage) -> str:
    """MAIL, RCPT, DATA one by one (smtplib's send_message keeps no answer): the answer
    to the data, which names the queue ID the server gave the mail."""
    sender = parseaddr(str(message["From"]))[1]
    recipients = [a for _, a in getaddresses([str(v) for v in message.get_all("To", [])])]
    code, text = smtp.mail(sender)
    if code != 250:
        smtp.rset()
        raise smtplib.SMTPSenderRefused(code, text, sender)
    refused = {}
    for recipient in recipients:
        code, text = smtp.rcpt(recipient)
        if code not in (250, 251):
            refused[recipient] = (code, text)
    if refused:
        smtp.rset()
        raise smtplib.SMTPRecipientsRefused(refused)
    code, text = smtp.data(message.as_bytes(policy=SMTP))
    return f"{code} {text.decode(errors='replace')}".strip()


def _text(said: bytes | str) -> str:
    return said.decode(errors="replace") if isinstance(said, bytes) else said
