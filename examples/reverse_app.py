"""The application file of the classic two-file layout (compare ``twistd -y``).

Run it with:  reverserd --foreground -y examples/reverse_app.py
or detached:  reverserd start -y examples/reverse_app.py --save
then:         printf 'hello\nshout\nhello\nquit\n' | nc 127.0.0.1 2325

``reverserd stop`` then saves reverse-shutdown.json; to carry on from it (its
line count included):  reverserd start -y examples/reverse_app.py -f reverse-shutdown.json

REVERSE_APP_PORT chooses another port (0: any free one, shown in the log).
"""

import os

from reverse import reverse_service

from reverserd import Application

application = Application("reverse", process_name="reverse-app")
reverse_service(int(os.environ.get("REVERSE_APP_PORT", "2325"))).set_service_parent(application)
