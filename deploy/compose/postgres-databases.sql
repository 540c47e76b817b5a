-- One database per service, as each service owns its data (run once, on an empty volume).
CREATE DATABASE auth;
CREATE DATABASE users;
CREATE DATABASE orders;
CREATE DATABASE payments;
CREATE DATABASE notifications;
